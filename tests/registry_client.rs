//! The Schema Registry client against a registry that follows Confluent's documented API
//! (the harness's `SchemaRegistry`; no real one can be installed here): registration, ids,
//! caching, Confluent's error codes, retries, basic auth and TLS.

use serde_json::json;
use sluice_connect::registry::{Registry, RegistryError, RegistrySettings};
use sluice_harness::{RegistryTls, SchemaRegistry, TestCerts};

fn client(url: &str) -> Registry {
    Registry::new(&RegistrySettings {
        url: url.into(),
        attempts: 3,
        ..Default::default()
    })
    .unwrap()
}

fn record(fields: serde_json::Value) -> String {
    json!({"type": "record", "name": "Key", "namespace": "sluice.public.t", "fields": fields})
        .to_string()
}

#[test]
fn registration_is_idempotent_and_ids_are_fetched_once() {
    let registry = SchemaRegistry::start(None).unwrap();
    let c = client(&registry.url());
    let v1 = record(json!([{"name": "id", "type": "long"}]));
    let id = c.register("sluice.public.t-key", &v1).unwrap();
    assert_eq!(c.register("sluice.public.t-key", &v1).unwrap(), id);
    // The second registration and the lookup of the id just registered came from the cache.
    assert_eq!(c.schema_by_id(id).unwrap(), v1);
    assert_eq!(
        registry.requests(),
        ["POST /subjects/sluice.public.t-key/versions"]
    );
    // Another process asks once, then remembers.
    let other = client(&registry.url());
    assert_eq!(other.schema_by_id(id).unwrap(), v1);
    assert_eq!(other.schema_by_id(id).unwrap(), v1);
    assert_eq!(
        registry
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /schemas/ids/"))
            .count(),
        1
    );
    // A compatible second version: versions listed oldest first.
    let v2 = record(
        json!([{"name": "id", "type": "long"}, {"name": "x", "type": ["null", "int"], "default": null}]),
    );
    let id2 = c.register("sluice.public.t-key", &v2).unwrap();
    assert_ne!(id, id2);
    assert_eq!(c.versions("sluice.public.t-key").unwrap(), [1, 2]);
    let latest = c.version("sluice.public.t-key", None).unwrap();
    assert_eq!((latest.version, latest.id), (2, id2));
    assert!(c
        .versions("sluice.public.nothing-value")
        .unwrap()
        .is_empty());
}

#[test]
fn confluent_error_codes_become_definite_errors_that_say_what_happened() {
    let registry = SchemaRegistry::start(None).unwrap();
    let c = client(&registry.url());
    c.register("s-key", &record(json!([{"name": "id", "type": "long"}])))
        .unwrap();
    // long → int breaks BACKWARD (the registry's default level): 409.
    let e = c
        .register("s-key", &record(json!([{"name": "id", "type": "int"}])))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Incompatible { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(
        e.to_string().starts_with(
            "schema registry refused the new schema of subject s-key as incompatible (HTTP 409): \
             Schema being registered is incompatible with an earlier schema for subject \"s-key\""
        ),
        "{e}"
    );
    // Not Avro: 422 with error code 42201.
    let e = c.register("s-key", "{\"type\": \"nonsense\"}").unwrap_err();
    match &e {
        RegistryError::Refused { status, code, .. } => assert_eq!((*status, *code), (422, 42201)),
        other => panic!("{other:?}"),
    }
    // An unknown id: 404 with 40403.
    assert_eq!(
        c.schema_by_id(999).unwrap_err(),
        RegistryError::NotFound {
            what: "schema id 999".into(),
            code: 40403
        }
    );
    assert!(matches!(
        c.version("nope-value", None).unwrap_err(),
        RegistryError::NotFound { code: 40401, .. }
    ));
}

#[test]
fn server_errors_are_retried_then_reported_as_transient() {
    let registry = SchemaRegistry::start(None).unwrap();
    let c = client(&registry.url());
    let schema = record(json!([{"name": "id", "type": "long"}]));
    // Two 500s, then success on the third attempt.
    registry.fail_next(2);
    c.register("s-key", &schema).unwrap();
    assert_eq!(registry.requests().len(), 3);
    // More failures than attempts: transient, so the caller retries later.
    registry.fail_next(10);
    let e = c.versions("s-key").unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string()
            .contains("HTTP 500: Error in the backend data store"),
        "{e}"
    );
    // Nothing listening at all: transient too.
    let port = sluice_harness::free_port();
    let e = client(&format!("http://127.0.0.1:{port}"))
        .schema_by_id(1)
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
}

#[test]
fn basic_auth_credentials_are_sent_and_wrong_ones_are_definite() {
    let registry = SchemaRegistry::start(Some("sluice:s3cret")).unwrap();
    let with = |user: Option<&str>, password: Option<&str>| {
        Registry::new(&RegistrySettings {
            url: registry.url(),
            username: user.map(str::to_string),
            password: password.map(str::to_string),
            ..Default::default()
        })
        .unwrap()
    };
    let schema = record(json!([{"name": "id", "type": "long"}]));
    with(Some("sluice"), Some("s3cret"))
        .register("s-key", &schema)
        .unwrap();
    for c in [with(Some("sluice"), Some("wrong")), with(None, None)] {
        let e = c.register("s-key", &schema).unwrap_err();
        assert!(
            matches!(e, RegistryError::Unauthorized { status: 401, .. }),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert!(
            e.to_string().contains("SLUICE_SCHEMAS_REGISTRY_PASSWORD"),
            "{e}"
        );
    }
}

#[test]
fn tls_verifies_the_registry_against_the_configured_ca() {
    let certs = TestCerts::generate(&["DNS:localhost"]).unwrap();
    let registry = SchemaRegistry::start_tls(
        None,
        RegistryTls {
            cert: &certs.server_cert,
            key: &certs.server_key,
        },
    )
    .unwrap();
    assert!(registry.url().starts_with("https://localhost:"));
    let with_ca = |ca: &std::path::Path| {
        Registry::new(&RegistrySettings {
            url: registry.url(),
            ca_file: Some(ca.to_path_buf()),
            ..Default::default()
        })
        .unwrap()
    };
    let schema = record(json!([{"name": "id", "type": "long"}]));
    let id = with_ca(&certs.ca).register("s-key", &schema).unwrap();
    let e = with_ca(&certs.other_ca).schema_by_id(id).unwrap_err();
    assert!(
        !e.is_transient(),
        "a refused certificate is not retried: {e:?}"
    );
    assert!(
        e.to_string().contains("UnknownIssuer") && e.to_string().contains("ca_file"),
        "{e}"
    );
    // A CA file that holds no certificate is a configuration error at startup.
    let e = Registry::new(&RegistrySettings {
        url: registry.url(),
        ca_file: Some(certs.server_key.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("holds no PEM certificate"), "{e}");
}
