//! Handlers of the binlog archive: agents' `ArchiveState` and
//! `ReportArchive` (not audited: they arrive several times a second, like
//! heartbeats), the operators' `ArchiveStatus` and `SearchBinlog`, and
//! `Pitr`.

use lockstep_proto::coordinator as pb;
use tonic::{Response, Status};

use super::{CoordinatorService, to_status};
use crate::{archive, pitr};

impl CoordinatorService {
    pub(super) async fn do_archive_state(
        &self,
        r: pb::ArchiveStateRequest,
    ) -> Result<Response<pb::ArchiveStateReply>, Status> {
        archive::state(&self.core, &r.cluster, &r.name)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    pub(super) async fn do_report_archive(
        &self,
        r: pb::ReportArchiveRequest,
    ) -> Result<Response<pb::ArchiveStateReply>, Status> {
        archive::report(&self.core, &self.heads, r)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    pub(super) async fn do_archive_status(
        &self,
        r: pb::ArchiveStatusRequest,
    ) -> Result<Response<pb::ArchiveStatusReply>, Status> {
        archive::status(&self.core, &self.heads, &r.cluster)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    pub(super) async fn do_search_binlog(
        &self,
        r: pb::SearchBinlogRequest,
    ) -> Result<Response<pb::SearchBinlogReply>, Status> {
        pitr::search(&self.core, r)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    pub(super) async fn do_pitr(
        &self,
        r: pb::PitrRequest,
    ) -> Result<Response<pb::PitrReply>, Status> {
        pitr::run(&self.core, &self.jobs, r)
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}
