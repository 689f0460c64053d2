//! Per-user settings: today only the consent to team fallback.

/// A user's settings. A user who never saved any gets [`Settings::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// May the operator's (team) credentials serve this user? Default true.
    pub allow_gateway_fallback: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_gateway_fallback: true,
        }
    }
}
