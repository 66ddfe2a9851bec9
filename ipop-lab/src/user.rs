//! A system user (and its group) made for one test, removed on drop: agents run as it under
//! `setpriv`, as ipop@.service runs them as `ipop`.

use crate::command::{cmd, ok};

pub struct SystemUser {
    pub name: String,
}

impl SystemUser {
    /// `useradd --system --user-group <prefix>u`; panics if it cannot.
    pub fn new(prefix: &str) -> SystemUser {
        let name = format!("{}u", prefix.trim_end_matches('_'));
        ok(&["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", &name]);
        SystemUser { name }
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = cmd(&["userdel", &self.name]);
        let _ = cmd(&["groupdel", &self.name]);
    }
}
