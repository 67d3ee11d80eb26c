//! The handlers of server registration and removal, after
//! [`CoordinatorService::gate`] admitted them: a registration binds the
//! server to its caller's identity (see docs/coordinator.md, "Registrations
//! bound to an identity").

use lockstep_proto::coordinator as pb;
use tonic::{Response, Status};

use super::{CoordinatorService, require, to_status};
use crate::catalog::{ACCESS_VERSION, Command, MediaAgent, Server};
use crate::core::now_unix_ms;
use crate::error::Error;

impl CoordinatorService {
    pub(super) async fn do_register_server(
        &self,
        r: pb::RegisterServerRequest,
        by: Option<String>,
    ) -> Result<Response<pb::RegisterServerReply>, Status> {
        require("cluster", &r.cluster)?;
        require("server name", &r.name)?;
        require("agent address", &r.agent_addr)?;
        if r.media {
            let cmd = Command::RegisterMedia(MediaAgent {
                cluster: r.cluster.clone(),
                name: r.name.clone(),
                agent_addr: r.agent_addr,
                registered_at_unix_ms: now_unix_ms(),
                registered_by: by,
            });
            self.propose_registration(cmd).await?;
            self.core.touch(&r.cluster, &r.name);
            tracing::info!(cluster = %r.cluster, agent = %r.name, "media agent registered");
            return Ok(Response::new(pb::RegisterServerReply {}));
        }
        let cmd = Command::RegisterServer(Server {
            cluster: r.cluster.clone(),
            name: r.name.clone(),
            agent_addr: r.agent_addr,
            flavour: r.flavour,
            version: r.version,
            server_id: r.server_id,
            server_uuid: r.server_uuid,
            registered_at_unix_ms: now_unix_ms(),
            registered_by: by,
        });
        self.propose_registration(cmd).await?;
        self.core.touch(&r.cluster, &r.name);
        tracing::info!(cluster = %r.cluster, server = %r.name, "server registered");
        Ok(Response::new(pb::RegisterServerReply {}))
    }

    /// Proposes a registration. One that binds an identity needs catalog
    /// version 3: until every coordinator supports it, the registration is
    /// proposed without the binding (a rolling upgrade), and logged.
    async fn propose_registration(&self, mut cmd: crate::catalog::Command) -> Result<(), Status> {
        match self.core.propose(&cmd).await {
            Err(Error::VersionTooLow { .. }) => {
                let (name, by) = match &mut cmd {
                    Command::RegisterServer(s) => (s.name.clone(), s.registered_by.take()),
                    Command::RegisterMedia(m) => (m.name.clone(), m.registered_by.take()),
                    _ => return Err(Status::internal("not a registration")),
                };
                tracing::warn!(server = %name, identity = ?by, "the cluster is below catalog version {ACCESS_VERSION}: the registration is not bound to its identity");
                self.core.propose(&cmd).await.map_err(to_status)
            }
            r => r.map_err(to_status),
        }
    }

    /// Removes a server, or a media agent of that name (and so its
    /// identity binding).
    pub(super) async fn do_remove_server(
        &self,
        r: pb::RemoveServerRequest,
    ) -> Result<Response<pb::RemoveServerReply>, Status> {
        require("cluster", &r.cluster)?;
        require("server name", &r.name)?;
        let (c, n) = (r.cluster.clone(), r.name.clone());
        let media = self
            .core
            .read(move |cat| {
                !cat.clusters.get(&c).is_some_and(|s| s.contains_key(&n))
                    && cat.media.get(&c).is_some_and(|m| m.contains_key(&n))
            })
            .await
            .map_err(to_status)?;
        let (cluster, name) = (r.cluster.clone(), r.name.clone());
        let cmd = if media {
            Command::RemoveMedia { cluster, name }
        } else {
            Command::RemoveServer { cluster, name }
        };
        self.core.propose(&cmd).await.map_err(to_status)?;
        tracing::info!(cluster = %r.cluster, server = %r.name, media, "server removed");
        Ok(Response::new(pb::RemoveServerReply {}))
    }
}
