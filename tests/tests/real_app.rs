//! A real application's spec end to end on the real engine: a web service
//! on its database's network, secrets and files, a named volume, a
//! hardened replica (read-only root, tmpfs, user, limits), a private
//! registry with htpasswd auth (Debian's `docker-registry`), and the same
//! secrets, files and env files on the process runtime. Everything a test
//! creates (containers, networks, volumes, the registry) is removed by a
//! guard, also when the test fails.

use bg_tests::agent::{unique_service, Agent, RunningAgent, Svc};
use bg_tests::api::{raw, RawResponse, Target};
use bg_tests::docker::docker_with_images;
use bg_tests::load::Load;
use bg_tests::status::outcome;
use bg_tests::wait::eventually;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OP: Duration = Duration::from_secs(120);

/// Run a docker CLI command; its stdout, or a panic with its stderr.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes what a test created with the docker CLI, on drop.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        for c in &self.containers {
            quiet(&["rm", "-f", "-v", c]);
        }
        for v in &self.volumes {
            quiet(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            quiet(&["network", "rm", n]);
        }
        for i in &self.images {
            quiet(&["rmi", "-f", i]);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw(Target::Tcp(addr), "GET", path, &[], "").await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn put(addr: SocketAddr, path: &str, body: &str) -> RawResponse {
    raw(Target::Tcp(addr), "PUT", path, &[], body.to_string())
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

fn inspect(container: &str) -> Value {
    let text = docker(&["inspect", container]);
    serde_json::from_str::<Value>(&text).expect("inspect JSON")[0].clone()
}

/// The (mode, uid, gid, content) of `path` in `container`, as `docker cp`
/// hands it out (a tar archive).
fn docker_cp(container: &str, path: &str) -> (u32, u64, u64, String) {
    let out = Command::new("docker").args(["cp", &format!("{container}:{path}"), "-"]).output().unwrap();
    assert!(out.status.success(), "docker cp: {}", String::from_utf8_lossy(&out.stderr));
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let mut entry = archive.entries().unwrap().next().expect("one entry").unwrap();
    let h = entry.header().clone();
    let mut content = String::new();
    std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
    (h.mode().unwrap() & 0o7777, h.uid().unwrap(), h.gid().unwrap(), content)
}

fn assert_ok(status: &Value, agent: &RunningAgent) {
    assert_eq!(outcome(status).0, "succeeded", "{status}\n{}", agent.log());
}

fn first_container(status: &Value, color: &str) -> String {
    status["colors"][color]["replicas"][0]["runtime_id"].as_str().expect("a replica").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_reaches_its_db_by_alias_across_a_promote_under_load() {
    if !docker_with_images("real_app_network", &["v1", "v2"]) {
        return;
    }
    let mut cleanup = Cleanup::default();
    let net = unique_service("bgnet");
    docker(&["network", "create", &net]);
    cleanup.networks.push(net.clone());
    let db = unique_service("bgdb");
    docker(&[
        "run",
        "-d",
        "--name",
        &db,
        "--network",
        &net,
        "--network-alias",
        "db",
        "-e",
        "VERSION=db1",
        "websample:v1",
    ]);
    cleanup.containers.push(db.clone());

    let name = unique_service("web");
    let missing_net = unique_service("bg-no-such-net");
    let nonet = unique_service("nonet");
    let agent = Agent::docker()
        .service(
            Svc::new(&name)
                .replicas(2)
                .env("UPSTREAM_URL", "http://db:5000/")
                .set("", "networks", &format!("[{net:?}]"))
                .set("", "network_aliases", "[\"web\"]"),
        )
        .service(Svc::new(&nonet).set("", "networks", &format!("[{missing_net:?}]")))
        .start()
        .await;
    let first = agent.op(&name, "deploy", json!({}), OP).await;
    assert_ok(&first, &agent);
    let addr = agent.listen(&name);
    let answer = get(addr, "/upstream").await;
    assert_eq!((answer.status, answer.text()), (200, "db1\n".to_string()));

    let load = Load::keepalive(8).target(addr).path("/upstream").start();
    eventually("load is flowing", Duration::from_secs(20), || load.completed() > 100).await;
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let status = agent.op(&name, "deploy", v2, OP).await;
    assert_ok(&status, &agent);
    let after = load.completed();
    eventually("requests after the promote", Duration::from_secs(20), || load.completed() > after + 100)
        .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.version("v1") > 0 && report.version("v2") > 0, "{:?}", report.by_version);
    assert_eq!(get(addr, "/upstream").await.text(), "db1\n");
    let green = inspect(&first_container(&status, "green"));
    let aliases = &green["NetworkSettings"]["Networks"][&net]["Aliases"];
    assert!(aliases.as_array().unwrap().iter().any(|a| a == "web"), "{aliases}");
    assert_eq!(status["colors"]["green"]["spec"]["networks"], json!([net]));

    // A network that does not exist: a deploy error naming it, nothing started.
    let failed = agent.op(&nonet, "deploy", json!({}), OP).await;
    let (result, message) = outcome(&failed);
    assert_eq!(result, "failed", "{failed}");
    assert!(message.contains(&missing_net) && message.contains("does not exist"), "{message}");
    assert!(failed["colors"]["blue"]["replicas"].as_array().unwrap().is_empty(), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_files_land_with_mode_and_owner_and_only_their_digest_shows() {
    if !docker_with_images("real_app_secrets", &["v1"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = unique_service("sec");
    let (svc, secret_text) = Svc::new(&name).with_secret_and_file(dir.path());
    let agent = Agent::docker().service(svc).start().await;
    let status = agent.op(&name, "deploy", json!({}), OP).await;
    assert_ok(&status, &agent);
    let addr = agent.listen(&name);
    assert_eq!(get(addr, "/file/run/secrets/db_password").await.text(), secret_text);
    assert_eq!(get(addr, "/file/etc/app/app.toml").await.text(), "answer = 42\n");
    let container = first_container(&status, "blue");
    assert_eq!(docker_cp(&container, "/run/secrets/db_password"), (0o400, 1000, 1000, secret_text.clone()));
    assert_eq!(docker_cp(&container, "/etc/app/app.toml").0, 0o440);

    let sha = bg_agent::runtime::sources::sha256_hex(secret_text.as_bytes());
    let spec = &status["colors"]["blue"]["spec"];
    assert_eq!(spec["secrets"]["db_password"]["sha256"], sha.as_str());
    assert_eq!(spec["secrets"]["db_password"]["mode"], "0400");
    let state = std::fs::read_to_string(agent.state_dir().join("state.json")).unwrap();
    assert!(state.contains(&sha), "the state file records the digest");
    let text_status = agent.bgctl(&["status", &name]);
    assert!(text_status.stdout.contains(&sha), "{}", text_status.stdout);
    let events = serde_json::to_string(&agent.events(&name).await).unwrap();
    let env = inspect(&container)["Config"]["Env"].to_string();
    for (what, text) in [
        ("state file", state),
        ("log", agent.log()),
        ("status", status.to_string()),
        ("bgctl status", text_status.stdout),
        ("events", events),
        ("docker inspect env", env),
    ] {
        assert!(!text.contains(&secret_text), "the secret's content is in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardened_replica_runs_as_configured_and_the_engine_reports_it() {
    if !docker_with_images("real_app_hardened", &["v1"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "tok").unwrap();
    let name = unique_service("hard");
    let svc = Svc::new(&name)
        .set("", "read_only", "true")
        .set("", "tmpfs", "[\"/tmp\"]")
        .set("", "user", "\"1000:1000\"")
        .set("", "workdir", "\"/app\"")
        .set("", "memory", "\"256MiB\"")
        .set("", "memory_reservation", "\"128MiB\"")
        .set("", "cpus", "0.5")
        .set("", "pids_limit", "64")
        .set("", "cap_drop", "[\"ALL\"]")
        .set("", "init", "true")
        .set("", "labels", "{ \"com.example.team\" = \"web\" }")
        .set("", "log_driver", "\"json-file\"")
        .set("", "log_opts", "{ max-size = \"1m\", max-file = \"2\" }")
        .set("", "extra_hosts", "[\"db.internal:192.0.2.10\"]")
        .set("secrets", "token", &format!("{{ source = {:?} }}", secret.display().to_string()));
    let agent = Agent::docker().service(svc).start().await;
    let status = agent.op(&name, "deploy", json!({}), OP).await;
    assert_ok(&status, &agent);
    let addr = agent.listen(&name);

    let inside = put(addr, "/file/tmp/inside", "x").await;
    assert_eq!(inside.status, 201, "{}", inside.text());
    let outside = put(addr, "/file/outside", "x").await;
    assert_eq!(outside.status, 500, "{}", outside.text());
    assert!(outside.text().to_lowercase().contains("read-only"), "{}", outside.text());
    assert_eq!(get(addr, "/file/run/secrets/token").await.text(), "tok");
    let who: Value = serde_json::from_str(&get(addr, "/whoami").await.text()).unwrap();
    assert_eq!(
        (who["uid"].as_u64(), who["gid"].as_u64(), who["cwd"].as_str()),
        (Some(1000), Some(1000), Some("/app"))
    );

    let c = inspect(&first_container(&status, "blue"));
    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], 256 << 20);
    assert_eq!(host["MemoryReservation"], 128 << 20);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["PidsLimit"], 64);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["Init"], true);
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    assert_eq!(host["LogConfig"]["Config"], json!({"max-size": "1m", "max-file": "2"}));
    assert_eq!(host["ExtraHosts"], json!(["db.internal:192.0.2.10"]));
    assert_eq!(c["Config"]["Labels"]["com.example.team"], "web");
    assert_eq!(c["Config"]["Labels"]["bg.service"], name.as_str());
    assert_eq!(c["Config"]["User"], "1000:1000");
    assert_eq!(status["colors"]["blue"]["spec"]["memory"], "256MiB");
    assert_eq!(status["colors"]["blue"]["spec"]["cpus"], 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_volume_keeps_what_v1_wrote_for_v2() {
    if !docker_with_images("real_app_volume", &["v1", "v2"]) {
        return;
    }
    let mut cleanup = Cleanup::default();
    let volume = unique_service("bgvol");
    cleanup.volumes.push(volume.clone());
    let name = unique_service("vol");
    let svc = Svc::new(&name).set("", "volumes", &format!("[\"{volume}:/data\"]"));
    let agent = Agent::docker().service(svc).start().await;
    assert_ok(&agent.op(&name, "deploy", json!({}), OP).await, &agent);
    let addr = agent.listen(&name);
    assert_eq!(put(addr, "/file/data/note", "from v1").await.status, 201);
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    assert_ok(&agent.op(&name, "deploy", v2, OP).await, &agent);
    let note = get(addr, "/file/data/note").await;
    assert_eq!((note.text(), note.header("x-version")), ("from v1".to_string(), Some("v2")));
    drop(agent);
}

/// Debian's `docker-registry` on a loopback port with htpasswd auth.
struct Registry {
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn start_registry(cleanup: &mut Cleanup, user: &str, password: &str) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd (Debian package apache2-utils) must be installed for the registry test");
    assert!(htpasswd.status.success());
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let addr = bg_tests::agent::free_addr();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: bg\n    path: {}\n",
        dir.path().join("data").display(),
        dir.path().join("htpasswd").display()
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new("docker-registry")
        .args(["serve", config_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry (Debian package docker-registry) must be installed for the registry test");
    cleanup.children.push(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "the registry did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry { addr, dir }
}

/// A Docker `config.json` with one `auths` entry.
fn write_auth(path: &Path, registry: SocketAddr, user: &str, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(path, json!({"auths": {registry.to_string(): {"auth": auth}}}).to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_image_is_pulled_with_auth_and_pinned_by_digest() {
    if !docker_with_images("real_app_registry", &["v1", "v2"]) {
        return;
    }
    let mut cleanup = Cleanup::default();
    let registry = start_registry(&mut cleanup, "bg", "right-pw");
    let repo = format!("{}/websample", registry.addr);
    let tag = format!("{repo}:live");
    let config_dir = registry.dir.path().join("docker");
    std::fs::create_dir_all(&config_dir).unwrap();
    let auth_file = config_dir.join("config.json");
    write_auth(&auth_file, registry.addr, "bg", "right-pw");
    let push = |image: &str| {
        docker(&["tag", image, &tag]);
        docker(&["--config", config_dir.to_str().unwrap(), "push", &tag]);
    };
    push("websample:v1");
    cleanup.images.push(tag.clone());
    // Only the registry has it under this name now.
    docker(&["rmi", &tag]);

    let name = unique_service("reg");
    let svc = Svc::new(&name).image(&tag).set("", "pull", "\"always\"");
    // A credential helper on the agent's PATH, for credsStore and
    // credHelpers below: the docker-credential protocol (`get`, the server
    // on stdin, JSON on stdout), logging who asked.
    let helper_dir = registry.dir.path().join("bin");
    std::fs::create_dir_all(&helper_dir).unwrap();
    let helper_log = registry.dir.path().join("helper.log");
    let helper = helper_dir.join("docker-credential-bgtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\necho \"$1 $server\" >> {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"bg\",\"Secret\":\"right-pw\"}}' \"$server\"\n",
            helper_log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", helper_dir.display(), std::env::var("PATH").unwrap_or_default());
    let agent = Agent::docker()
        .agent_env("PATH", &path)
        .runtime_key("auth_file", &format!("{:?}", auth_file.display().to_string()))
        .service(svc)
        .start()
        .await;
    let status = agent.op(&name, "deploy", json!({}), OP).await;
    assert_ok(&status, &agent);
    let spec = &status["colors"]["blue"]["spec"];
    let digest = spec["digest"].as_str().expect("the digest is recorded").to_string();
    assert!(digest.starts_with("sha256:"), "{spec}");
    assert_eq!(spec["image"], tag.as_str());
    let events = agent.events(&name).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "message" && e["message"].as_str().is_some_and(|m| m.starts_with("pull"))),
        "pull progress is in the event stream"
    );
    let container = first_container(&status, "blue");
    let original_image = inspect(&container)["Image"].clone();
    assert_eq!(inspect(&container)["Config"]["Image"], format!("{repo}@{digest}"));
    let text = agent.bgctl(&["status", &name]).stdout;
    assert!(text.contains(&tag) && text.contains(&digest), "{text}");

    // The tag moves; a replica that dies is replaced with the recorded digest.
    push("websample:v2");
    let killed_id = inspect(&container)["Id"].clone();
    docker(&["kill", &container]);
    // The replacement gets the same name; its container id tells it apart.
    let replaced = || {
        let out =
            Command::new("docker").args(["inspect", "-f", "{{.Id}} {{.State.Running}}", &container]).output();
        out.is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            !text.contains(killed_id.as_str().unwrap_or("-")) && text.trim().ends_with("true")
        })
    };
    eventually("a replacement replica", OP, replaced).await;
    let healed = agent
        .wait_status(&name, "the replacement is healthy", OP, |s| {
            s["colors"]["blue"]["replicas"][0]["health"] == "healthy"
        })
        .await;
    let replacement = inspect(&first_container(&healed, "blue"));
    assert_eq!(replacement["Image"], original_image, "the replacement runs the recorded image");
    assert_eq!(replacement["Config"]["Image"], format!("{repo}@{digest}"));

    // A wrong password: a deploy error naming registry and image, nothing left.
    write_auth(&auth_file, registry.addr, "bg", "wrong-pw");
    let failed = agent.op(&name, "deploy", json!({}), OP).await;
    let (result, message) = outcome(&failed);
    assert_eq!(result, "failed", "{failed}");
    assert!(message.contains(&registry.addr.to_string()) && message.contains(&tag), "{message}");
    assert!(failed["colors"]["green"]["replicas"].as_array().unwrap().is_empty(), "{failed}");
    assert_eq!(failed["active"], "blue");

    // A missing image, with the right password: named too.
    write_auth(&auth_file, registry.addr, "bg", "right-pw");
    let nope = format!("{repo}:nope");
    let failed = agent.op(&name, "deploy", json!({"image": nope}), OP).await;
    let (result, message) = outcome(&failed);
    assert_eq!(result, "failed", "{failed}");
    assert!(message.contains(&nope) && message.contains(&registry.addr.to_string()), "{message}");
    cleanup.images.push(format!("{repo}@{digest}"));

    // The same pull through a credential helper: credHelpers for this
    // registry, then credsStore for all; the helper was asked each time.
    for (n, config) in [
        (1, json!({"credHelpers": {registry.addr.to_string(): "bgtest"}})),
        (2, json!({"credsStore": "bgtest"})),
    ] {
        std::fs::write(&auth_file, config.to_string()).unwrap();
        let through_helper = agent.op(&name, "deploy", json!({}), OP).await;
        assert_ok(&through_helper, &agent);
        let asked = std::fs::read_to_string(&helper_log).unwrap_or_default();
        assert_eq!(asked.lines().filter(|l| l.starts_with("get ")).count(), n, "{asked}");
        assert!(asked.contains(&registry.addr.to_string()), "{asked}");
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_replicas_get_secrets_files_env_file_and_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "process-secret").unwrap();
    let conf = dir.path().join("app.toml");
    std::fs::write(&conf, "x = 1\n").unwrap();
    let env_file = dir.path().join("web.env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\nVERSION=from-file\n").unwrap();
    let workdir = dir.path().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let path = |p: &PathBuf| format!("{:?}", p.display().to_string());
    let svc = Svc::new("web")
        .set("", "env_file", &format!("[{}]", path(&env_file)))
        .set("", "workdir", &path(&workdir))
        .set("secrets", "token", &format!("{{ source = {} }}", path(&secret)))
        .set("files", "\"/etc/app/app.toml\"", &format!("{{ source = {}, mode = \"0640\" }}", path(&conf)));
    let agent = Agent::process().service(svc).start().await;
    let status = agent.op("web", "deploy", json!({}), OP).await;
    assert_ok(&status, &agent);
    let addr = agent.listen("web");
    let who: Value = serde_json::from_str(&get(addr, "/whoami").await.text()).unwrap();
    // env wins over env_file.
    assert_eq!(who["version"], "v1");
    assert_eq!(who["cwd"], workdir.display().to_string());
    let pid = agent.processes_with("FROM_FILE=yes");
    assert_eq!(pid.len(), 1, "the env file's variable reached the replica");
    let environ = std::fs::read(format!("/proc/{}/environ", pid[0])).unwrap();
    let var = |key: &str| {
        environ
            .split(|b| *b == 0)
            .find_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix(&format!("{key}=")).map(String::from))
            .unwrap_or_else(|| panic!("{key} is not set"))
    };
    let secrets_dir = var("BG_SECRETS_DIR");
    let files_dir = var("BG_FILES_DIR");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&secrets_dir), 0o700);
    let token = format!("{secrets_dir}/token");
    assert_eq!(
        (mode(&token), std::fs::read_to_string(&token).unwrap()),
        (0o400, "process-secret".to_string())
    );
    let app = format!("{files_dir}/etc/app/app.toml");
    assert_eq!(get(addr, &format!("/file{app}")).await.text(), "x = 1\n");
    assert_eq!(mode(&app), 0o640);
    let sha = bg_agent::runtime::sources::sha256_hex(b"process-secret");
    assert_eq!(status["colors"]["blue"]["spec"]["secrets"]["token"]["sha256"], sha.as_str());
    assert!(!agent.log().contains("process-secret"));

    // The content a deploy read is what its replicas get, even when the
    // source changes: a replica that dies is replaced with the old content.
    std::fs::write(&secret, "changed").unwrap();
    agent.kill_replicas();
    let old = pid[0];
    eventually("a replacement replica", OP, || {
        agent.processes_with("FROM_FILE=yes").iter().any(|p| *p != old)
    })
    .await;
    agent
        .wait_status("web", "the replacement is healthy", OP, |s| {
            s["colors"]["blue"]["replicas"][0]["health"] == "healthy"
        })
        .await;
    let pid: Vec<i32> = agent.processes_with("FROM_FILE=yes").into_iter().filter(|p| *p != old).collect();
    let environ = std::fs::read(format!("/proc/{}/environ", pid[0])).unwrap();
    let dir_now = environ
        .split(|b| *b == 0)
        .find_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix("BG_SECRETS_DIR=").map(String::from))
        .unwrap();
    assert_eq!(std::fs::read_to_string(format!("{dir_now}/token")).unwrap(), "process-secret");
}

/// `bgctl run` on the engine: a container of the spec (its env and
/// secrets) runs the command, its output and exit code come back, and
/// nothing is left behind; `--image` runs another image, a missing one is
/// named. Then `pre_stop = { exec }` runs inside the old replica's
/// container, after its drain and before its stop signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgctl_run_and_pre_stop_exec_use_containers_of_the_spec() {
    if !docker_with_images("real_app_run_exec", &["v1", "v2"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "run-secret").unwrap();
    let name = unique_service("run");
    let svc = Svc::new(&name)
        .set("secrets", "pw", &format!("{{ source = {:?} }}", secret.display().to_string()))
        .set(
            "hooks",
            "pre_stop",
            r#"{ exec = ["/websample", "task", "echo", "quiescing", "cat", "/etc/hostname", "env", "BG_REPLICA"] }"#,
        );
    let agent = Agent::docker().service(svc).start().await;
    let oneoffs = || docker(&["ps", "-a", "-q", "--filter", &format!("label=bg.oneoff={name}")]);

    // Before any deploy: the configured spec.
    let out = agent.bgctl(&[
        "run",
        &name,
        "--",
        "task",
        "echo",
        "hello",
        "env",
        "VERSION",
        "cat",
        "/run/secrets/pw",
        "warn",
        "oops",
        "exit",
        "3",
    ]);
    out.assert_exit_code(3);
    assert_eq!(out.stdout, "hello\nVERSION=v1\nrun-secret\n", "{out:?}");
    assert!(out.stderr.contains("oops"), "{out:?}");
    assert_eq!(oneoffs(), "", "the one-off container was left behind");

    let status = agent.op(&name, "deploy", json!({}), OP).await;
    assert_ok(&status, &agent);
    let blue = first_container(&status, "blue");
    let hostname = inspect(&blue)["Config"]["Hostname"].as_str().unwrap().to_string();
    let out = agent.bgctl(&[
        "--output",
        "json",
        "run",
        &name,
        "--image",
        "websample:v2",
        "--",
        "task",
        "exit",
        "0",
    ]);
    out.assert_exit_code(0);
    assert_eq!(out.stdout_json()["exit_code"], 0);
    let out = agent.bgctl(&["run", &name, "--image", "websample:no-such-tag", "--", "task", "exit", "0"]);
    out.assert_exit_code(1);
    assert!(out.stderr.contains("websample:no-such-tag"), "{out:?}");
    assert_eq!(oneoffs(), "");
    assert!(!agent.log().contains("run-secret"), "the secret reached the log");

    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    assert_ok(&agent.op(&name, "deploy", v2, OP).await, &agent);
    let events = agent.events(&name).await;
    let at = |what: &str, f: &dyn Fn(&Value) -> bool| {
        let e = events.iter().find(|e| f(e)).unwrap_or_else(|| panic!("no {what} event in {events:#?}"));
        (e["seq"].as_u64().unwrap(), e["at"].as_str().unwrap().to_string())
    };
    let message = |e: &Value, text: &str| e["type"] == "message" && e["message"] == text;
    let drained = at("drained", &|e| e["type"] == "drained" && e["color"] == "blue");
    let quiescing = at("pre_stop", &|e| message(e, "pre_stop: quiescing"));
    // The exec ran in the container: its hostname, and the hook's env.
    at("pre_stop hostname", &|e| message(e, &format!("pre_stop: {hostname}")));
    at("pre_stop env", &|e| message(e, "pre_stop: BG_REPLICA=1"));
    let stopped =
        at("stopped", &|e| e["type"] == "replica" && e["color"] == "blue" && e["state"] == "stopped");
    assert!(drained.0 < quiescing.0 && quiescing.0 < stopped.0, "{drained:?} {quiescing:?} {stopped:?}");
    assert!(drained.1 <= quiescing.1 && quiescing.1 <= stopped.1, "{drained:?} {quiescing:?} {stopped:?}");
}

/// `rollback` returns to the exact previous spec: every key as recorded for
/// that revision, and its secret with the content its deploy read, though
/// the source file changed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_spec_exactly() {
    if !docker_with_images("real_app_rollback", &["v1", "v2"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "first-secret").unwrap();
    let name = unique_service("rb");
    let svc = Svc::new(&name)
        .set("", "memory", "\"96MiB\"")
        .set("", "pids_limit", "50")
        .set("", "user", "\"1000:1000\"")
        .set("labels", "team", "\"web\"")
        .set("secrets", "pw", &format!("{{ source = {:?} }}", secret.display().to_string()));
    let agent = Agent::docker().service(svc).start().await;
    let first = agent.op(&name, "deploy", json!({}), OP).await;
    assert_ok(&first, &agent);
    let first_spec = first["colors"]["blue"]["spec"].clone();

    std::fs::write(&secret, "second-secret").unwrap();
    let v2 = json!({"image": "websample:v2", "env": {"VERSION": "v2"}, "promote": true});
    let second = agent.op(&name, "deploy", v2, OP).await;
    assert_ok(&second, &agent);
    assert_ne!(second["colors"]["green"]["spec"]["secrets"], first_spec["secrets"], "{second}");
    let addr = agent.listen(&name);
    assert_eq!(get(addr, "/file/run/secrets/pw").await.text(), "second-secret");

    let back = agent.op(&name, "rollback", json!({}), OP).await;
    assert_ok(&back, &agent);
    let active = back["active"].as_str().unwrap().to_string();
    assert_eq!(back["colors"][&active]["spec"], first_spec, "{back}");
    let answer = get(addr, "/file/run/secrets/pw").await;
    assert_eq!((answer.text(), answer.header("x-version")), ("first-secret".to_string(), Some("v1")));
    let container = inspect(&first_container(&back, &active));
    let host = &container["HostConfig"];
    assert_eq!((host["Memory"].as_i64(), host["PidsLimit"].as_i64()), (Some(96 << 20), Some(50)));
    assert_eq!(container["Config"]["User"], "1000:1000");
    assert_eq!(container["Config"]["Labels"]["team"], "web");
    assert_eq!(container["Config"]["Image"], "websample:v1");
}
