//! The request log: one record per served API request, in order, for assertions.
use serde::Serialize;
use std::sync::Mutex;

/// One served request, as the emulator's request log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub subresource: String,
    pub code: u16,
    pub field_manager: String,
    pub user_agent: String,
    /// The authenticated user (`system:admin`, `system:serviceaccount:<ns>:<name>`).
    pub user: String,
}

impl RequestRecord {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }
}

#[derive(Default)]
pub struct RequestLog(Mutex<Vec<RequestRecord>>);

impl RequestLog {
    pub fn push(&self, r: RequestRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
