//! Every request body the client can send is validated against the
//! published OpenAPI file, by a small schema walker (`$ref`, `type`,
//! `required`, `properties` / `additionalProperties`, `enum`, `items`,
//! `minimum`, `maximum`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use mvm_core::backend::{DriveSpec, KernelPaths, NetSpec, VmSpec};
use mvm_core::paths::InstanceDir;
use mvm_firecracker::api::*;
use mvm_firecracker::launch::BootConfig;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// Names the published OpenAPI file (`.ci/run` points it at
/// `../shared/firecracker/firecracker-api-v1.16.1.yaml`).
const SPEC_ENV: &str = mvm_core::env::MVM_FIRECRACKER_API_SPEC;

struct Spec {
    doc: Yaml,
}

impl Spec {
    /// The OpenAPI document named by [`SPEC_ENV`], or `None` after
    /// reporting the test as skipped.
    fn load(test: &str) -> Option<Self> {
        let Some(path) = std::env::var_os(SPEC_ENV).filter(|v| !v.is_empty()) else {
            mvm_core::testing::skip(&format!(
                "SKIPPED: {test}: {SPEC_ENV} does not name the Firecracker OpenAPI file"
            ));
            return None;
        };
        let text = fs_err::read_to_string(PathBuf::from(path))
            .unwrap_or_else(|e| panic!("{SPEC_ENV} is set but unreadable: {e}"));
        Some(Self {
            doc: serde_yaml_ng::from_str(&text).expect("valid YAML"),
        })
    }

    fn definition(&self, name: &str) -> &Yaml {
        let d = &self.doc["definitions"][name];
        assert!(!d.is_null(), "definition {name} not in spec");
        d
    }

    fn resolve<'a>(&'a self, schema: &'a Yaml) -> &'a Yaml {
        let mut s = schema;
        while let Some(r) = s.get("$ref").and_then(Yaml::as_str) {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("unsupported $ref {r}"));
            s = self.definition(name);
        }
        s
    }

    /// Errors of `value` against `schema`, with JSON-pointer-ish paths.
    fn validate(&self, schema: &Yaml, value: &Json, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(allowed) = schema.get("enum").and_then(Yaml::as_sequence) {
            let ok = allowed.iter().any(|a| yaml_eq_json(a, value));
            if !ok {
                errors.push(format!("{at}: {value} not in enum {allowed:?}"));
            }
        }
        let ty = schema.get("type").and_then(Yaml::as_str);
        match ty {
            Some("object") | None if schema.get("properties").is_some() || ty.is_some() => {
                let Some(obj) = value.as_object() else {
                    errors.push(format!("{at}: expected object, got {value}"));
                    return;
                };
                if let Some(req) = schema.get("required").and_then(Yaml::as_sequence) {
                    for r in req {
                        let r = r.as_str().expect("required names are strings");
                        if !obj.contains_key(r) {
                            errors.push(format!("{at}: required property {r} missing"));
                        }
                    }
                }
                let props = schema.get("properties").and_then(Yaml::as_mapping);
                let additional = schema.get("additionalProperties");
                for (k, v) in obj {
                    match props.and_then(|p| p.get(k.as_str())) {
                        Some(s) => self.validate(s, v, &format!("{at}/{k}"), errors),
                        None => match additional {
                            Some(Yaml::Bool(true)) => {}
                            Some(s @ Yaml::Mapping(_)) => {
                                self.validate(s, v, &format!("{at}/{k}"), errors)
                            }
                            _ => errors.push(format!("{at}: property {k} unknown to the schema")),
                        },
                    }
                }
            }
            Some("string") if !value.is_string() => {
                errors.push(format!("{at}: expected string, got {value}"));
            }
            Some("boolean") if !value.is_boolean() => {
                errors.push(format!("{at}: expected boolean, got {value}"));
            }
            Some("string") | Some("boolean") => {}
            Some("integer") | Some("number") => {
                let n = if ty == Some("integer") {
                    value
                        .as_i64()
                        .map(|n| n as f64)
                        .or(value.as_u64().map(|n| n as f64))
                } else {
                    value.as_f64()
                };
                let Some(n) = n else {
                    errors.push(format!("{at}: expected {}, got {value}", ty.unwrap()));
                    return;
                };
                if let Some(min) = schema.get("minimum").and_then(Yaml::as_f64)
                    && n < min
                {
                    errors.push(format!("{at}: {n} below minimum {min}"));
                }
                if let Some(max) = schema.get("maximum").and_then(Yaml::as_f64)
                    && n > max
                {
                    errors.push(format!("{at}: {n} above maximum {max}"));
                }
            }
            Some("array") => {
                let Some(items) = value.as_array() else {
                    errors.push(format!("{at}: expected array, got {value}"));
                    return;
                };
                let item_schema = schema.get("items").expect("array schema has items");
                for (i, v) in items.iter().enumerate() {
                    self.validate(item_schema, v, &format!("{at}/{i}"), errors);
                }
            }
            Some(other) if other != "object" => panic!("schema type {other} not supported"),
            _ => {}
        }
    }

    fn check(&self, definition: &str, value: &Json) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(
            self.definition(definition),
            value,
            &format!("#{definition}"),
            &mut errors,
        );
        errors
    }
}

fn yaml_eq_json(y: &Yaml, j: &Json) -> bool {
    match (y, j) {
        (Yaml::String(a), Json::String(b)) => a == b,
        (Yaml::Bool(a), Json::Bool(b)) => a == b,
        (Yaml::Number(a), Json::Number(b)) => a.as_f64() == b.as_f64(),
        // YAML reads `None` and `2M` as strings already; nothing else needed.
        _ => false,
    }
}

fn j<T: serde::Serialize>(v: &T) -> Json {
    serde_json::to_value(v).unwrap()
}

fn bucket(full: bool) -> TokenBucket {
    TokenBucket {
        one_time_burst: full.then_some(1000),
        refill_time: 100,
        size: 10_000,
    }
}

fn limiter(full: bool) -> RateLimiter {
    if full {
        RateLimiter {
            bandwidth: Some(bucket(true)),
            ops: Some(bucket(false)),
        }
    } else {
        RateLimiter::default()
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// Representative bodies per definition: every optional field set, none
/// set, and every enum value.
fn samples() -> BTreeMap<&'static str, Vec<Json>> {
    let mut m: BTreeMap<&'static str, Vec<Json>> = BTreeMap::new();
    let levels = [
        LogLevel::Error,
        LogLevel::Warning,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
        LogLevel::Off,
    ];
    let mut loggers = vec![j(&Logger::default())];
    for l in levels {
        loggers.push(j(&Logger {
            level: Some(l),
            log_path: Some(p("/x/vmm.log")),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: Some("api_server::request".into()),
        }));
    }
    m.insert("Logger", loggers);
    m.insert(
        "Metrics",
        vec![j(&Metrics {
            metrics_path: p("/x/m.json"),
        })],
    );
    m.insert(
        "BootSource",
        vec![
            j(&BootSource {
                boot_args: Some("console=ttyS0".into()),
                initrd_path: Some(p("/i")),
                kernel_image_path: p("/k"),
            }),
            j(&BootSource {
                boot_args: None,
                initrd_path: None,
                kernel_image_path: p("/k"),
            }),
        ],
    );
    let mut machines = vec![j(&MachineConfiguration {
        cpu_template: None,
        smt: None,
        mem_size_mib: 128,
        track_dirty_pages: None,
        vcpu_count: 1,
        huge_pages: None,
    })];
    for t in [
        CpuTemplate::C3,
        CpuTemplate::T2,
        CpuTemplate::T2S,
        CpuTemplate::T2CL,
        CpuTemplate::T2A,
        CpuTemplate::V1N1,
        CpuTemplate::None,
    ] {
        for h in [HugePages::None, HugePages::Huge2M] {
            machines.push(j(&MachineConfiguration {
                cpu_template: Some(t),
                smt: Some(true),
                mem_size_mib: 256,
                track_dirty_pages: Some(true),
                vcpu_count: 32,
                huge_pages: Some(h),
            }));
        }
    }
    m.insert("MachineConfiguration", machines);
    let mut drives = vec![j(&Drive {
        drive_id: "rootfs".into(),
        partuuid: None,
        is_root_device: false,
        cache_type: None,
        is_read_only: None,
        path_on_host: None,
        rate_limiter: None,
        io_engine: None,
        socket: None,
    })];
    for c in [CacheType::Unsafe, CacheType::Writeback] {
        for e in [IoEngine::Sync, IoEngine::Async] {
            drives.push(j(&Drive {
                drive_id: "d1".into(),
                partuuid: Some("0eaa91a0-01".into()),
                is_root_device: true,
                cache_type: Some(c),
                is_read_only: Some(true),
                path_on_host: Some(p("/d")),
                rate_limiter: Some(limiter(true)),
                io_engine: Some(e),
                socket: Some(p("/vhost.sock")),
            }));
        }
    }
    m.insert("Drive", drives);
    m.insert(
        "PartialDrive",
        vec![
            j(&PartialDrive {
                drive_id: "d".into(),
                path_on_host: None,
                rate_limiter: None,
            }),
            j(&PartialDrive {
                drive_id: "d".into(),
                path_on_host: Some(p("/n")),
                rate_limiter: Some(limiter(false)),
            }),
        ],
    );
    m.insert(
        "NetworkInterface",
        vec![
            j(&NetworkInterface {
                guest_mac: None,
                host_dev_name: "tap0".into(),
                iface_id: "eth0".into(),
                mtu: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }),
            j(&NetworkInterface {
                guest_mac: Some("06:00:00:00:00:01".into()),
                host_dev_name: "tap0".into(),
                iface_id: "eth0".into(),
                mtu: Some(1500),
                rx_rate_limiter: Some(limiter(true)),
                tx_rate_limiter: Some(limiter(false)),
            }),
        ],
    );
    m.insert(
        "Vsock",
        vec![
            j(&Vsock {
                guest_cid: 3,
                uds_path: p("/v"),
                vsock_id: None,
            }),
            j(&Vsock {
                guest_cid: 99,
                uds_path: p("/v"),
                vsock_id: Some("vsock0".into()),
            }),
        ],
    );
    m.insert(
        "EntropyDevice",
        vec![
            j(&EntropyDevice::default()),
            j(&EntropyDevice {
                rate_limiter: Some(limiter(true)),
            }),
        ],
    );
    m.insert(
        "InstanceActionInfo",
        [
            ActionType::FlushMetrics,
            ActionType::InstanceStart,
            ActionType::SendCtrlAltDel,
        ]
        .iter()
        .map(|&action_type| j(&InstanceActionInfo { action_type }))
        .collect(),
    );
    m.insert(
        "Vm",
        [VmState::Paused, VmState::Resumed]
            .iter()
            .map(|&state| j(&Vm { state }))
            .collect(),
    );
    let mut creates = vec![j(&SnapshotCreateParams {
        mem_file_path: p("/m"),
        snapshot_path: p("/s"),
        snapshot_type: None,
    })];
    for t in [SnapshotType::Full, SnapshotType::Diff] {
        creates.push(j(&SnapshotCreateParams {
            mem_file_path: p("/m"),
            snapshot_path: p("/s"),
            snapshot_type: Some(t),
        }));
    }
    m.insert("SnapshotCreateParams", creates);
    let mut loads = vec![j(&SnapshotLoadParams {
        enable_diff_snapshots: None,
        track_dirty_pages: None,
        mem_file_path: None,
        mem_backend: None,
        snapshot_path: p("/s"),
        resume_vm: None,
        network_overrides: None,
        vsock_override: None,
        clock_realtime: None,
    })];
    for t in [MemoryBackendType::File, MemoryBackendType::Uffd] {
        loads.push(j(&SnapshotLoadParams {
            enable_diff_snapshots: Some(false),
            track_dirty_pages: Some(true),
            mem_file_path: Some(p("/m")),
            mem_backend: Some(MemoryBackend {
                backend_type: t,
                backend_path: p("/b"),
            }),
            snapshot_path: p("/s"),
            resume_vm: Some(true),
            network_overrides: Some(vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap1".into(),
            }]),
            vsock_override: Some(VsockOverride { uds_path: p("/v2") }),
            clock_realtime: Some(true),
        }));
    }
    m.insert("SnapshotLoadParams", loads);
    m.insert(
        "MmdsContentsObject",
        vec![
            serde_json::json!({}),
            serde_json::json!({"latest": {"meta-data": {"ami-id": "x"}}}),
        ],
    );
    m.insert(
        "Balloon",
        vec![
            j(&Balloon {
                amount_mib: 0,
                deflate_on_oom: false,
                stats_polling_interval_s: None,
                free_page_hinting: None,
                free_page_reporting: None,
            }),
            j(&Balloon {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: Some(5),
                free_page_hinting: Some(true),
                free_page_reporting: Some(true),
            }),
        ],
    );
    m
}

fn spec_for_launch(net: bool) -> VmSpec {
    VmSpec {
        name: "a".into(),
        cpus: 2,
        memory_mib: 256,
        kernel: KernelPaths {
            bzimage: "/k/bz".into(),
            vmlinux: "/k/vmlinux".into(),
        },
        initrd: Some("/k/initrd".into()),
        kernel_args: vec!["mvm.x=1".into()],
        drives: vec![DriveSpec {
            id: "rootfs".into(),
            path: "/r".into(),
            read_only: true,
        }],
        net: net.then(|| NetSpec {
            tap: "mvm-a".into(),
            mac: "06:00:ac:10:00:02".into(),
        }),
        vsock_cid: 3,
        transient: true,
        isolation: None,
    }
}

#[test]
fn every_request_body_matches_the_openapi_schema() {
    let Some(spec) = Spec::load("every_request_body_matches_the_openapi_schema") else {
        return;
    };
    let samples = samples();
    let mut failures = Vec::new();
    for ep in endpoints::ALL {
        let Some(def) = ep.body else { continue };
        let vals = samples
            .get(def)
            .unwrap_or_else(|| panic!("no sample bodies for {def} ({} {})", ep.method, ep.path));
        assert!(!vals.is_empty());
        for v in vals {
            failures.extend(spec.check(def, v));
        }
    }
    // What `launch` really sends, with and without a network interface.
    let dir = InstanceDir::new("/h/instances/a");
    for net in [false, true] {
        let c = BootConfig::new(&spec_for_launch(net), &dir);
        failures.extend(spec.check("Logger", &j(&c.logger)));
        failures.extend(spec.check("BootSource", &j(&c.boot_source)));
        failures.extend(spec.check("MachineConfiguration", &j(&c.machine)));
        for d in &c.drives {
            failures.extend(spec.check("Drive", &j(d)));
        }
        failures.extend(spec.check("Vsock", &j(&c.vsock)));
        failures.extend(spec.check("EntropyDevice", &j(&c.entropy)));
        if let Some(n) = &c.net {
            failures.extend(spec.check("NetworkInterface", &j(n)));
        }
        // The --config-file document.
        failures.extend(spec.check("FullVmConfiguration", &j(&c.to_config_file())));
        // What snapshot and restore really send.
        let snap = mvm_core::snapshot::SnapshotDir::new("/h/templates/t");
        let s = spec_for_launch(net);
        failures.extend(spec.check(
            "SnapshotCreateParams",
            &j(&mvm_firecracker::snapshot::create_params(&snap)),
        ));
        failures.extend(spec.check(
            "SnapshotLoadParams",
            &j(&mvm_firecracker::snapshot::load_params(&s, &dir, &snap)),
        ));
        let meta = mvm_core::snapshot::SnapshotMeta {
            format: 1,
            backend: mvm_core::BackendKind::Firecracker,
            vmm_version: "1.16.1".into(),
            cpus: s.cpus,
            memory_mib: s.memory_mib,
            memory: mvm_core::snapshot::MemoryMode::MemoryFile,
            drives: vec![mvm_core::snapshot::SnapshotDrive {
                id: "rootfs".into(),
                read_only: true,
                path: "/elsewhere".into(),
            }],
            net,
            state_bytes: 1,
            memory_bytes: 1,
            created: String::new(),
            jailed: false,
        };
        let patches = mvm_firecracker::snapshot::drive_patches(&meta, &s);
        assert_eq!(patches.len(), 1);
        for p in patches {
            failures.extend(spec.check("PartialDrive", &j(&p)));
        }
    }
    assert!(
        failures.is_empty(),
        "schema violations:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_endpoint_the_client_uses_exists_with_that_body() {
    let Some(spec) = Spec::load("every_endpoint_the_client_uses_exists_with_that_body") else {
        return;
    };
    for ep in endpoints::ALL {
        let op = &spec.doc["paths"][ep.path][ep.method.to_ascii_lowercase().as_str()];
        assert!(
            op.is_mapping(),
            "{} {} is not in the spec",
            ep.method,
            ep.path
        );
        let body_ref = op
            .get("parameters")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .find(|p| p.get("in").and_then(Yaml::as_str) == Some("body"))
            .and_then(|p| p["schema"].get("$ref"))
            .and_then(Yaml::as_str)
            .map(|r| r.trim_start_matches("#/definitions/").to_string());
        assert_eq!(
            body_ref.as_deref(),
            ep.body,
            "body schema of {} {}",
            ep.method,
            ep.path
        );
        // Path parameters are named as in the spec.
        if let Some(a) = ep.path.find('{') {
            let name = &ep.path[a + 1..ep.path.find('}').unwrap()];
            let has = op["parameters"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["in"].as_str() == Some("path") && p["name"].as_str() == Some(name));
            assert!(has, "{} {}: no path parameter {name}", ep.method, ep.path);
        }
    }
}

#[test]
fn the_validator_rejects_what_it_should() {
    let Some(spec) = Spec::load("the_validator_rejects_what_it_should") else {
        return;
    };
    let unknown = serde_json::json!({"drive_id": "a", "is_root_device": false, "colour": 1});
    let e = spec.check("Drive", &unknown);
    assert!(e.iter().any(|e| e.contains("colour")), "{e:?}");
    let missing = serde_json::json!({"drive_id": "a"});
    let e = spec.check("Drive", &missing);
    assert!(e.iter().any(|e| e.contains("is_root_device")), "{e:?}");
    let bad_enum = serde_json::json!({"action_type": "Reboot"});
    assert_eq!(spec.check("InstanceActionInfo", &bad_enum).len(), 1);
    let bad_type = serde_json::json!({"mem_size_mib": "128", "vcpu_count": 1});
    assert_eq!(spec.check("MachineConfiguration", &bad_type).len(), 1);
    let too_many = serde_json::json!({"mem_size_mib": 128, "vcpu_count": 33});
    assert_eq!(spec.check("MachineConfiguration", &too_many).len(), 1);
    let nested = serde_json::json!({"rate_limiter": {"ops": {"size": 1}}});
    let e = spec.check("EntropyDevice", &nested);
    assert!(e.iter().any(|e| e.contains("refill_time")), "{e:?}");
    let low_cid = serde_json::json!({"guest_cid": 2, "uds_path": "/v"});
    assert_eq!(spec.check("Vsock", &low_cid).len(), 1);
}

#[test]
fn responses_in_the_spec_shape_decode() {
    // Response types decode bodies shaped like the spec's definitions.
    let info: InstanceInfo = serde_json::from_value(serde_json::json!({
        "app_name": "Firecracker", "id": "a", "state": "Not started", "vmm_version": "1.16.1"
    }))
    .unwrap();
    assert_eq!(info.state, InstanceState::NotStarted);
    let Some(spec) = Spec::load("responses_in_the_spec_shape_decode") else {
        return;
    };
    let states = spec.definition("InstanceInfo")["properties"]["state"]["enum"]
        .as_sequence()
        .unwrap()
        .clone();
    for s in states {
        let v = serde_json::json!({"app_name": "F", "id": "a", "state": s.as_str().unwrap(), "vmm_version": "1"});
        serde_json::from_value::<InstanceInfo>(v).unwrap();
    }
}
