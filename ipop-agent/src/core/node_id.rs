//! Node ids: an agent's name in its overlay.

/// Node ids: 1 to 64 characters from `[A-Za-z0-9._-]`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        Ok(())
    } else {
        Err(format!("node id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(check_node_id("host-1.lab_2").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65), "a/b"] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
    }
}
