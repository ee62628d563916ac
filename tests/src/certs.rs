//! A test CA made with rcgen, signing server and client certificates into
//! a directory (keys mode 0600), with a chosen validity window.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A CA and the directory its files go to.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
    name: String,
}

/// What a leaf is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server certificate (serverAuth).
    Server,
    /// A client certificate (clientAuth).
    Client,
}

impl TestCa {
    /// A new CA; its certificate is written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("bluegreen test CA {name}"));
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write CA");
        TestCa { cert, key, dir: dir.to_path_buf(), name: name.to_string() }
    }

    /// The CA certificate, DER, for a client's root store.
    pub fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A leaf for `names` (DNS names or IP addresses), valid until
    /// `not_after` (default: a year), written to `<stem>.pem` and
    /// `<stem>.key`.
    pub fn leaf(
        &self,
        stem: &str,
        names: &[&str],
        usage: Usage,
        not_after: Option<time::OffsetDateTime>,
    ) -> (PathBuf, PathBuf) {
        self.issue(stem, names, usage, not_after, None)
    }

    /// A server leaf for `names` with this serial number (so a test can
    /// tell which one was served; it is also in the subject, `#N`),
    /// replacing `<stem>.pem` and `<stem>.key`
    /// by rename, key first: a watcher never reads half a file.
    pub fn server_leaf_serial(&self, stem: &str, names: &[&str], serial: u64) -> (PathBuf, PathBuf) {
        self.issue(stem, names, Usage::Server, None, Some(serial))
    }

    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        usage: Usage,
        not_after: Option<time::OffsetDateTime>,
        serial: Option<u64>,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        for n in names {
            params.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
            });
        }
        let serial_mark = serial.map(|n| format!(" #{n}")).unwrap_or_default();
        params.distinguished_name.push(DnType::CommonName, format!("{stem} by {}{serial_mark}", self.name));
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = not_after.unwrap_or(now + time::Duration::days(365));
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        let (c, k) = (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}.key")));
        let (tc, tk) = (self.dir.join(format!(".{stem}.pem.new")), self.dir.join(format!(".{stem}.key.new")));
        std::fs::write(&tc, cert.pem()).expect("write leaf");
        std::fs::write(&tk, key.serialize_pem()).expect("write key");
        std::fs::set_permissions(&tk, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        std::fs::rename(&tk, &k).expect("rename key");
        std::fs::rename(&tc, &c).expect("rename leaf");
        (c, k)
    }
}
