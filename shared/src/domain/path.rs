//! Which rule of the resolution contract chose a request's credential, and
//! so who pays for it: a domain fact the stores (the usage ledger) and the
//! services share.

/// Which rule of the contract chose the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolutionPath {
    UserGateway,
    UserProvider,
    TeamGateway,
    TeamProvider,
}

impl ResolutionPath {
    pub const fn as_str(self) -> &'static str {
        match self {
            ResolutionPath::UserGateway => "user-gateway",
            ResolutionPath::UserProvider => "user-provider",
            ResolutionPath::TeamGateway => "team-gateway",
            ResolutionPath::TeamProvider => "team-provider",
        }
    }

    pub const ALL: [Self; 4] = [
        ResolutionPath::UserGateway,
        ResolutionPath::UserProvider,
        ResolutionPath::TeamGateway,
        ResolutionPath::TeamProvider,
    ];

    /// The path named by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Team paths are paid by the operator; BYOK paths by the user.
    pub const fn is_team(self) -> bool {
        matches!(
            self,
            ResolutionPath::TeamGateway | ResolutionPath::TeamProvider
        )
    }
}
