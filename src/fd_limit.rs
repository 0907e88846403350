//! The open-file limit. Every client connection costs a descriptor, and so does every upstream
//! connection; the usual soft limit of 1,024 caps a proxy at a few hundred busy clients and
//! then fails accepts with EMFILE. Like nginx's `worker_rlimit_nofile`, the soft limit is
//! raised to the hard limit at startup: the hard limit is the operator's (`docker run
//! --ulimit nofile=...`, the service's `ulimits`), the soft one is only a default.

use tracing::{info, warn};

/// Raises the soft limit to the hard limit and logs the outcome.
pub fn raise_open_files() {
    let before = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => soft,
        Err(e) => {
            warn!(error = %e, "cannot read the open file limit");
            return;
        }
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(after) if after > before => info!(
            from = before,
            to = after,
            "open file limit raised to the hard limit"
        ),
        Ok(after) => info!(limit = after, "open file limit is already the hard limit"),
        Err(e) => warn!(
            limit = before,
            error = %e,
            "cannot raise the open file limit: connections beyond it will be refused"
        ),
    }
}
