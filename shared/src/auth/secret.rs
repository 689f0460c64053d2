//! The gateway's own HS256 signing secret (`BYOK_JWT_SECRET`, or a file
//! created once in the data directory) and the tokens `byok-local` signs with it.

use super::*;

/// The HS256 signing secret. Its bytes are the UTF-8 bytes of its text form
/// (the value of `BYOK_JWT_SECRET` or the content of `jwt.secret`).
#[derive(Clone)]
pub struct JwtSecret(SecretSlice<u8>);

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(*****)")
    }
}

impl JwtSecret {
    /// Uses the raw UTF-8 bytes of `text`; rejects fewer than [`MIN_SECRET_LEN`] bytes.
    pub fn from_text(text: &str) -> Result<Self, AuthError> {
        if text.len() < MIN_SECRET_LEN {
            return Err(AuthError::WeakSecret);
        }
        Ok(Self(SecretSlice::from(text.as_bytes().to_vec())))
    }

    /// 32 random bytes from the OS, held as their base64url text (43
    /// characters), so the text form can be used as `BYOK_JWT_SECRET`.
    pub fn generate() -> Result<Self, AuthError> {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(raw.as_mut_slice())
            .map_err(|e| AuthError::Io(io::Error::other(e.to_string())))?;
        let text = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_slice()));
        Self::from_text(&text)
    }

    /// Reads `dir/jwt.secret`, creating it (mode 0600, directory 0700) with a
    /// freshly generated secret if it does not exist yet.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(AuthError::Io)?;
        }
        let path = dir.join(SECRET_FILE_NAME);
        let secret = Self::generate()?;
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                let mut text = zeroize::Zeroizing::new(secret.expose_bytes().to_vec());
                text.push(b'\n');
                if let Err(e) = file.write_all(&text).and_then(|()| file.sync_all()) {
                    // Leave no empty or partial file behind to be read later.
                    drop(file);
                    let _ = fs::remove_file(&path);
                    return Err(AuthError::Io(e));
                }
                tracing::info!(path = %path.display(), "created a new JWT secret file");
                Ok(secret)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::read_file(&path),
            Err(e) => Err(AuthError::Io(e)),
        }
    }

    /// Reads an existing secret file. A concurrent creator may not have
    /// written it yet, so an empty file is retried briefly.
    fn read_file(path: &Path) -> Result<Self, AuthError> {
        let mode = fs::metadata(path)
            .map_err(AuthError::Io)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the JWT secret file is readable by other users; chmod 600 it"
            );
        }
        for _ in 0..20 {
            let bytes = zeroize::Zeroizing::new(fs::read(path).map_err(AuthError::Io)?);
            let text = std::str::from_utf8(&bytes).map_err(|_| AuthError::WeakSecret)?;
            let text = text.trim();
            if !text.is_empty() {
                return Self::from_text(text);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(AuthError::WeakSecret)
    }

    pub(super) fn expose_bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// Signs an HS256 token for `sub`, valid for `ttl_secs` from `now_unix`, with
/// `groups: ["admin"]` when `admin`. Used by `byok-local token` and tests.
pub fn issue_token(
    secret: &JwtSecret,
    sub: &str,
    admin: bool,
    ttl_secs: u64,
    now_unix: i64,
) -> String {
    issue_token_with(secret, sub, admin, Map::new(), ttl_secs, now_unix)
}

/// [`issue_token`] with `extra` claims (e.g. a tenant claim).
pub fn issue_token_with(
    secret: &JwtSecret,
    sub: &str,
    admin: bool,
    extra: Map<String, Value>,
    ttl_secs: u64,
    now_unix: i64,
) -> String {
    let exp = now_unix.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let mut claims = extra;
    claims.insert("sub".into(), Value::from(sub));
    claims.insert("iat".into(), Value::from(now_unix));
    claims.insert("exp".into(), Value::from(exp));
    if admin {
        claims.insert("groups".into(), Value::from(vec![ADMIN_GROUP]));
    }
    sign(
        secret,
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &Value::Object(claims).to_string(),
    )
}

/// `b64(header).b64(payload).b64(HMAC-SHA256)`.
pub(super) fn sign(secret: &JwtSecret, header_json: &str, payload_json: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret.expose_bytes());
    // HS256 signing cannot fail (any key length is an HMAC key).
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap_or_default();
    format!("{signing_input}.{signature}")
}
