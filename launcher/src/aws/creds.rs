//! Credentials, region and endpoint the standard way, in the order the AWS
//! SDKs and CLI look (never from the job spec):
//! 1. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN);
//! 2. the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, default
//!    ~/.aws/credentials), profile AWS_PROFILE or "default";
//! 3. the instance role, from the instance metadata service (IMDSv2;
//!    AWS_EC2_METADATA_SERVICE_ENDPOINT moves it).
//!
//! Not there: SSO, `credential_process`, `role_arn` profiles (assume-role)
//! and web identity; a profile that uses them is named in the error.
//! The region: the spec's, AWS_REGION, AWS_DEFAULT_REGION, the profile's
//! `region` in ~/.aws/config (AWS_CONFIG_FILE), else the catalog offer's.
//! The endpoint: AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL, else
//! https://ec2.<region>.amazonaws.com.

use std::collections::BTreeMap;

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from ("environment", "profile default", "instance
    /// role r"), for messages.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(
            f,
            "Credentials({} from {})",
            self.access_key_id, self.source
        )
    }
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn home_file(env: Env, var: &str, default: &str) -> Option<std::path::PathBuf> {
    env(var)
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(default)))
}

/// An INI file's sections: name -> key -> value.
pub fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            out.entry(name.trim().to_string()).or_default();
        } else if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.get_mut(s)
                .expect("section entered")
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

fn profile(env: Env) -> String {
    env("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

/// The credentials, or a message saying where they were looked for.
pub fn credentials(env: Env) -> Result<Credentials, String> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
            source: "environment".into(),
        });
    }
    let name = profile(env);
    if let Some(path) = home_file(env, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(p) = parse_ini(&text).get(&name) {
                if let (Some(id), Some(secret)) =
                    (p.get("aws_access_key_id"), p.get("aws_secret_access_key"))
                {
                    return Ok(Credentials {
                        access_key_id: id.clone(),
                        secret_access_key: secret.clone(),
                        session_token: p.get("aws_session_token").cloned(),
                        source: format!("profile {name} in {}", path.display()),
                    });
                }
                for unsupported in [
                    "role_arn",
                    "credential_process",
                    "sso_session",
                    "sso_start_url",
                ] {
                    if p.contains_key(unsupported) {
                        return Err(format!("profile {name} in {} uses {unsupported}, which ringmaster does not support: export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN (e.g. from `aws configure export-credentials --format env`)", path.display()));
                    }
                }
            }
        }
    }
    instance_role(env).map_err(|e| {
        format!("no AWS credentials: not in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not in profile {name} of the shared credentials file, and no instance role ({e})")
    })
}

/// The instance role's credentials from IMDSv2.
fn instance_role(env: Env) -> Result<Credentials, String> {
    let base =
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    let base = base.trim_end_matches('/');
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(2)))
        .build()
        .new_agent();
    let token = agent
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send_empty()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map_err(|e| format!("metadata service {base}: {e}"))?;
    let get = |path: &str| {
        agent
            .get(format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", &token)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .map_err(|e| format!("metadata service {base}{path}: {e}"))
    };
    let roles = get("/latest/meta-data/iam/security-credentials/")?;
    let role = roles.lines().next().unwrap_or("").trim().to_string();
    if role.is_empty() {
        return Err("the instance has no role".into());
    }
    let doc: serde_json::Value = serde_json::from_str(&get(&format!(
        "/latest/meta-data/iam/security-credentials/{role}"
    ))?)
    .map_err(|e| format!("instance role {role}: {e}"))?;
    let s = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Ok(Credentials {
        access_key_id: s("AccessKeyId").ok_or("no AccessKeyId")?,
        secret_access_key: s("SecretAccessKey").ok_or("no SecretAccessKey")?,
        session_token: s("Token"),
        source: format!("instance role {role}"),
    })
}

/// The region: `spec`'s, the environment's, the profile's, or `fallback`.
pub fn region(env: Env, spec: Option<&str>, fallback: Option<&str>) -> Option<String> {
    spec.map(str::to_string)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| {
            let path = home_file(env, "AWS_CONFIG_FILE", ".aws/config")?;
            let text = std::fs::read_to_string(path).ok()?;
            let name = profile(env);
            let section = if name == "default" {
                name
            } else {
                format!("profile {name}")
            };
            parse_ini(&text).get(&section)?.get("region").cloned()
        })
        .or_else(|| fallback.map(str::to_string))
}

/// The EC2 endpoint for `region`.
pub fn endpoint(env: Env, region: &str) -> String {
    env("AWS_ENDPOINT_URL_EC2")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_environment_comes_first_then_the_profile() {
        let dir = std::env::temp_dir().join(format!("rm-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n[ml]\naws_access_key_id=AKIDML\naws_secret_access_key=s2\naws_session_token=t2\n[sso]\nsso_session = corp\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = credentials(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "s0"),
            ("AWS_SHARED_CREDENTIALS_FILE", f),
        ]))
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.source.as_str()),
            ("AKIDENV", "environment")
        );
        let c = credentials(&env_of(&[("AWS_SHARED_CREDENTIALS_FILE", f)])).unwrap();
        assert_eq!(c.access_key_id, "AKIDDEFAULT");
        let c = credentials(&env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", f),
            ("AWS_PROFILE", "ml"),
        ]))
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("AKIDML", Some("t2"))
        );
        let e = credentials(&env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", f),
            ("AWS_PROFILE", "sso"),
        ]))
        .unwrap_err();
        assert!(e.contains("sso_session"), "{e}");
        assert!(
            !format!("{c:?}").contains("s2"),
            "Debug must not show the secret"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn region_and_endpoint_follow_the_sdk_order() {
        let e = env_of(&[("AWS_DEFAULT_REGION", "eu-west-1")]);
        assert_eq!(
            region(&e, Some("us-west-2"), None).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            region(&e, None, Some("us-east-1")).as_deref(),
            Some("eu-west-1")
        );
        let none = env_of(&[("HOME", "/nonexistent")]);
        assert_eq!(
            region(&none, None, Some("us-east-1")).as_deref(),
            Some("us-east-1")
        );
        assert_eq!(
            endpoint(&none, "us-east-1"),
            "https://ec2.us-east-1.amazonaws.com"
        );
        let e = env_of(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:5001"),
        ]);
        assert_eq!(endpoint(&e, "us-east-1"), "http://127.0.0.1:5001");
    }
}
