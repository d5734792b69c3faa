//! Throwaway certificate authorities and server certificates for TLS tests, made with the
//! `openssl` command (EC P-256 keys: quick to generate).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;
use crate::Result;

/// A CA, a server certificate it signed for the given names, and an unrelated CA.
pub struct TestCerts {
    _dir: tempfile::TempDir,
    /// The CA that signed the server certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing here: verifying against it must fail.
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCerts {
    /// Generates the files; `names` become the server certificate's subjectAltNames
    /// (`DNS:localhost`, `IP:127.0.0.1`).
    pub fn generate(names: &[&str]) -> Result<TestCerts> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-certs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        make_ca(d, "ca")?;
        make_ca(d, "other-ca")?;
        let ext = d.join("server.ext");
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                names.join(",")
            ),
        )
        .map_err(|e| e.to_string())?;
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=sluice-test-server",
            "-keyout",
            &path(d, "server.key"),
            "-out",
            &path(d, "server.csr"),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(d, "server.csr"),
            "-CA",
            &path(d, "ca.pem"),
            "-CAkey",
            &path(d, "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path(d, "server.ext"),
            "-out",
            &path(d, "server.pem"),
        ])?;
        Ok(TestCerts {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            _dir: dir,
        })
    }
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn make_ca(dir: &Path, name: &str) -> Result<()> {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=sluice-test-{name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &path(dir, &format!("{name}.key")),
        "-out",
        &path(dir, &format!("{name}.pem")),
    ])
}

fn openssl(args: &[&str]) -> Result<()> {
    run(Command::new("openssl").args(args), None).map(|_| ())
}
