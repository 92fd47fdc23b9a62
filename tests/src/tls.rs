//! A test PKI for TLS shadows, written as PEM files: a CA, server certificates for an address
//! (valid, expired, for another name, from an untrusted CA) and a client certificate (mTLS).
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    SanType,
};

/// Where the PEM files of a [`TestPki`] are.
pub struct TestPki {
    dir: PathBuf,
}

/// A server certificate of the test PKI.
#[derive(Clone, Copy, Debug)]
pub enum ServerCert {
    /// Signed by the CA, for the address.
    Good,
    /// Signed by the CA, for the address, valid only in 2020.
    Expired,
    /// Signed by the CA, for another name.
    OtherName,
    /// For the address, signed by a CA nobody trusts.
    Untrusted,
}

impl ServerCert {
    fn stem(self) -> &'static str {
        match self {
            ServerCert::Good => "good",
            ServerCert::Expired => "expired",
            ServerCert::OtherName => "other-name",
            ServerCert::Untrusted => "untrusted",
        }
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl TestPki {
    /// Generates every certificate into `dir` (created), server certificates for `server`.
    pub fn write(dir: &Path, server: IpAddr) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = TestPki { dir: dir.to_owned() };
        let (trusted, stranger) = (ca("mirror test CA"), ca("stranger CA"));
        std::fs::write(pki.ca(), trusted.pem()).unwrap();
        let for_server = || {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = vec![SanType::IpAddress(server)];
            params
        };
        let mut expired = for_server();
        expired.not_before = date_time_ymd(2020, 1, 1);
        expired.not_after = date_time_ymd(2020, 12, 31);
        let other = CertificateParams::new(vec!["elsewhere.example".to_owned()]).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "mirror-agent");
        for (stem, params, issuer) in [
            (ServerCert::Good.stem(), for_server(), &trusted),
            (ServerCert::Expired.stem(), expired, &trusted),
            (ServerCert::OtherName.stem(), other, &trusted),
            (ServerCert::Untrusted.stem(), for_server(), &stranger),
            ("client", client, &trusted),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        }
        pki
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate and its key.
    pub fn server(&self, cert: ServerCert) -> (PathBuf, PathBuf) {
        let stem = cert.stem();
        (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}.key")))
    }

    /// The client certificate (CN mirror-agent, signed by the CA) and its key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }
}
