use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{share_for_binary, AtExit, ChildGuard};
use crate::tansu::{Tansu, TansuStorage};
use crate::{free_port, wait_until, Result};

/// The Apache Kafka version `deploy/local/kafka.sh` installs (keep in step with
/// `tests/kafka/pom.xml`).
pub const KAFKA_VERSION: &str = "4.4.0";

/// An Apache Kafka broker (KRaft, one node acting as broker and controller) on free ports in
/// its own temporary directory, from the jars `deploy/local/kafka.sh` copies out of Maven
/// Central. Internal topics have replication factor 1, the heap is bounded to 512 MiB, and
/// the data directory survives [`Kafka::kill`] and [`Kafka::restart`].
pub struct Kafka {
    pub port: u16,
    controller_port: u16,
    /// With [`Kafka::start_secure`]: a TLS listener and a SASL_SSL (SCRAM) listener.
    secure: Option<Secure>,
    lib: PathBuf,
    dir: tempfile::TempDir,
    server: Option<ChildGuard>,
}

/// The secured listeners of a broker started by [`Kafka::start_secure`].
struct Secure {
    tls_port: u16,
    sasl_port: u16,
    /// The broker's key and certificate chain, one PEM file (Kafka's PEM keystore).
    keystore: PathBuf,
    user: String,
    password: String,
}

/// Where the broker's jars are: `SLUICE_KAFKA_LIB`, else the cache `kafka.sh` fills.
fn kafka_lib() -> Result<PathBuf> {
    let lib = match std::env::var_os("SLUICE_KAFKA_LIB") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME").map_or_else(
                || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"),
                PathBuf::from,
            );
            cache.join(format!("sluice/kafka-{KAFKA_VERSION}/lib"))
        }
    };
    if lib.join(format!("kafka_2.13-{KAFKA_VERSION}.jar")).exists() {
        Ok(lib)
    } else {
        Err(format!(
            "no Apache Kafka {KAFKA_VERSION} jars in {}: run deploy/local/kafka.sh (or \
             deploy/local/prereqs.sh), or set SLUICE_KAFKA_LIB",
            lib.display()
        ))
    }
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

impl Kafka {
    pub fn start() -> Result<Kafka> {
        Kafka::start_with(None)
    }

    /// A broker that also listens with TLS (`bootstrap_tls`) and with SASL_SSL
    /// (`bootstrap_sasl`: SCRAM-SHA-256 and SCRAM-SHA-512 for `user`/`password`), its
    /// certificate and key from `certs` (a certificate naming 127.0.0.1). The plain listener
    /// stays for the tests' own use.
    pub fn start_secure(certs: &crate::TestCerts, user: &str, password: &str) -> Result<Kafka> {
        let keystore = certs.server_key.with_file_name("kafka-keystore.pem");
        let pem = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| e.to_string());
        std::fs::write(
            &keystore,
            pem(&certs.server_key)? + &pem(&certs.server_cert)? + &pem(&certs.ca)?,
        )
        .map_err(|e| e.to_string())?;
        Kafka::start_with(Some(Secure {
            tls_port: free_port(),
            sasl_port: free_port(),
            keystore,
            user: user.to_string(),
            password: password.to_string(),
        }))
    }

    fn start_with(secure: Option<Secure>) -> Result<Kafka> {
        let lib = kafka_lib()?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-kafka-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let kafka = Kafka {
            port: free_port(),
            controller_port: free_port(),
            secure,
            lib,
            dir,
            server: None,
        };
        kafka.write_config()?;
        kafka.format()?;
        let mut kafka = kafka;
        kafka.start_server()?;
        Ok(kafka)
    }

    fn classpath(&self) -> String {
        format!("{}/*", self.lib.display())
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.path();
        let (mut listeners, mut advertised, mut map, mut security) = (
            format!(
                "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                self.port, self.controller_port
            ),
            format!("PLAINTEXT://127.0.0.1:{}", self.port),
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string(),
            String::new(),
        );
        if let Some(s) = &self.secure {
            let secured = format!(
                ",SSL://127.0.0.1:{},SASL_SSL://127.0.0.1:{}",
                s.tls_port, s.sasl_port
            );
            listeners.push_str(&secured);
            advertised.push_str(&secured);
            map.push_str(",SSL:SSL,SASL_SSL:SASL_SSL");
            let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
            security = format!(
                "inter.broker.listener.name=PLAINTEXT\n\
                 ssl.keystore.type=PEM\n\
                 ssl.keystore.location={keystore}\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}\n",
                keystore = s.keystore.display(),
            );
        }
        let config = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             listeners={listeners}\n\
             advertised.listeners={advertised}\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map={map}\n\
             {security}\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             log.dirs={data}\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=5\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=5\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             num.partitions=1\n\
             auto.create.topics.enable=false\n\
             log.flush.interval.ms=1000\n",
            controller = self.controller_port,
            data = d.join("data").display(),
        );
        std::fs::write(d.join("server.properties"), config).map_err(|e| e.to_string())?;
        std::fs::write(
            d.join("log4j2.properties"),
            "rootLogger.level=WARN\n\
             rootLogger.appenderRef.stdout.ref=STDOUT\n\
             appender.stdout.type=Console\n\
             appender.stdout.name=STDOUT\n\
             appender.stdout.layout.type=PatternLayout\n\
             appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n",
        )
        .map_err(|e| e.to_string())
    }

    fn format(&self) -> Result<()> {
        let out = Command::new(java())
            .current_dir(self.dir.path())
            .args([
                "-Xmx256m",
                "-cp",
                &self.classpath(),
                "kafka.tools.StorageTool",
            ])
            .args(["format", "--standalone", "-c", "server.properties", "-t"])
            // A cluster id is 16 bytes, base64url without padding.
            .arg("c2x1aWNlLXRlc3Qta2Fmaw")
            .args(self.secure.iter().flat_map(|s| {
                ["SCRAM-SHA-256", "SCRAM-SHA-512"]
                    .into_iter()
                    .flat_map(move |m| {
                        [
                            "--add-scram".to_string(),
                            format!("{m}=[name={},password={}]", s.user, s.password),
                        ]
                    })
            }))
            .output()
            .map_err(|e| format!("run {}: {e}", java().display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kafka-storage format failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn start_server(&mut self) -> Result<()> {
        let d = self.dir.path();
        let mut cmd = Command::new(java());
        cmd.current_dir(d)
            .args(["-Xmx512m", "-Xms128m", "-XX:+UseSerialGC", "-Xss1m"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                d.join("log4j2.properties").display()
            ))
            .args(["-cp", &self.classpath(), "kafka.Kafka", "server.properties"]);
        self.server = Some(ChildGuard::spawn(
            "kafka",
            cmd,
            &d.join("kafka.log"),
            None,
            libc::SIGTERM,
        )?);
        let port = self.port;
        wait_until("kafka", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kafka.log")).unwrap_or_default()
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `bootstrap.servers` of the TLS listener ([`Kafka::start_secure`]).
    pub fn bootstrap_tls(&self) -> Option<String> {
        self.secure
            .as_ref()
            .map(|s| format!("127.0.0.1:{}", s.tls_port))
    }

    /// `bootstrap.servers` of the SASL_SSL listener ([`Kafka::start_secure`]).
    pub fn bootstrap_sasl(&self) -> Option<String> {
        self.secure
            .as_ref()
            .map(|s| format!("127.0.0.1:{}", s.sasl_port))
    }

    /// Kills the broker (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start_server()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
    }
}

/// The broker a test runs against: Apache Kafka by default; Tansu with
/// `SLUICE_TEST_BROKER=tansu` (a second Kafka-protocol implementation, for compatibility runs).
pub enum Broker {
    Kafka(Kafka),
    Tansu(Tansu),
    /// The test binary's shared Apache Kafka ([`Broker::shared`]), reached with the test's
    /// own namespace for topics and groups.
    Shared {
        bootstrap: String,
        namespace: String,
    },
}

/// The test binary's Apache Kafka, started by the first test that asks for it and kept until
/// the binary exits ([`share_for_binary`]).
fn shared_kafka() -> Result<String> {
    static SHARED: std::sync::OnceLock<Result<String>> = std::sync::OnceLock::new();
    share_for_binary("kafka", &SHARED, Kafka::start, |kafka| {
        (
            kafka.bootstrap(),
            AtExit {
                pid: kafka.server.as_ref().and_then(ChildGuard::pid),
                dir: kafka.dir.path().to_path_buf(),
            },
        )
    })
}

impl Broker {
    /// A broker for a test. On Tansu, memory storage (lost when it stops).
    pub fn start() -> Result<Broker> {
        Broker::start_with(TansuStorage::Memory)
    }

    /// A broker whose data survives [`Broker::kill`] and [`Broker::restart`] (Tansu: sqlite
    /// storage; Kafka's always does).
    pub fn start_durable() -> Result<Broker> {
        Broker::start_with(TansuStorage::Sqlite)
    }

    /// [`Broker::start`] or [`Broker::start_durable`] by `storage`.
    pub fn start_with(storage: TansuStorage) -> Result<Broker> {
        match std::env::var("SLUICE_TEST_BROKER").as_deref() {
            Ok("tansu") => Tansu::start(storage).map(Broker::Tansu),
            Ok("kafka") | Err(_) => Kafka::start().map(Broker::Kafka),
            Ok(other) => Err(format!(
                "SLUICE_TEST_BROKER={other}: expected `kafka` (the default) or `tansu`"
            )),
        }
    }

    /// A broker for a test that neither kills nor restarts it: the test binary's shared
    /// Apache Kafka, with a namespace of the test's own ([`Broker::namespace`]) that its
    /// topics, internal topics and groups must carry. On Tansu, a broker of the test's own.
    pub fn shared() -> Result<Broker> {
        if Broker::configured_is_tansu() {
            return Broker::start();
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Broker::Shared {
            bootstrap: shared_kafka()?,
            namespace: format!("t{n}."),
        })
    }

    /// What the names of this test's topics and groups start with: unique per test on a
    /// shared broker, empty on a broker of the test's own.
    pub fn namespace(&self) -> &str {
        match self {
            Broker::Shared { namespace, .. } => namespace,
            _ => "",
        }
    }

    /// `[kafka]` lines that keep a test's topics apart on a shared broker: `topic_prefix`
    /// (namespace + `prefix`) and the schema and state topics (in the namespace).
    pub fn kafka_toml(&self, prefix: &str) -> String {
        let ns = self.namespace();
        format!(
            "bootstrap_servers = \"{}\"\ntopic_prefix = \"{ns}{prefix}\"\n\
             schema_topic = \"{ns}_sluice_schemas\"\nstate_topic = \"{ns}_sluice_capture_state\"\n",
            self.bootstrap()
        )
    }

    /// Whether `SLUICE_TEST_BROKER` chooses Tansu.
    pub fn configured_is_tansu() -> bool {
        std::env::var("SLUICE_TEST_BROKER").as_deref() == Ok("tansu")
    }

    /// Whether this is Tansu (some tests show Tansu-only behaviour).
    pub fn is_tansu(&self) -> bool {
        matches!(self, Broker::Tansu(_))
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Kafka(k) => k.bootstrap(),
            Broker::Tansu(t) => t.bootstrap(),
            Broker::Shared { bootstrap, .. } => bootstrap.clone(),
        }
    }

    pub fn log(&self) -> String {
        match self {
            Broker::Kafka(k) => k.log(),
            Broker::Tansu(t) => t.log(),
            Broker::Shared { .. } => {
                "(the shared broker's log is in its temporary directory)".into()
            }
        }
    }

    /// Kills the broker. Panics on the shared broker: a test that kills its broker starts
    /// its own ([`Broker::start`]).
    pub fn kill(&mut self) {
        match self {
            Broker::Kafka(k) => k.kill(),
            Broker::Tansu(t) => t.kill(),
            Broker::Shared { .. } => {
                panic!("the shared broker cannot be killed: use Broker::start()")
            }
        }
    }

    /// Restarts the broker. Panics on the shared broker, as [`Broker::kill`] does.
    pub fn restart(&mut self) -> Result<()> {
        match self {
            Broker::Kafka(k) => k.restart(),
            Broker::Tansu(t) => t.restart(),
            Broker::Shared { .. } => {
                panic!("the shared broker cannot be restarted: use Broker::start()")
            }
        }
    }
}
