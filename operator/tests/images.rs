//! The container images (`scripts/images`, buildah, no Docker engine, no registry):
//!
//! - `images_are_labelled_non_root_and_run_in_their_own_root`: each OCI archive names its
//!   image and version, carries the OCI labels (version, source, licenses), runs as 65532
//!   with the binary as entrypoint, holds only root-owned files outside the user's home, and
//!   its binary starts inside the unpacked root as that user: every shared library it needs
//!   is in the image.
//! - `dockerfiles_and_scripts_images_build_the_same_binaries`: the cargo command of each
//!   Dockerfile's build stage is the one `scripts/images` runs, and the Dockerfiles' version
//!   is the workspace's.
//!
//! The archives are this build's binaries packaged by `scripts/images --profile <this
//! build's> --no-build` (support/images.rs), shared with the pod tests. Needs root, buildah
//! and umoci (`scripts/install-test-deps`).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

/// The image's OCI layout: (index.json, the manifest, the config) of its only image.
fn read_archive(archive: &Path, dir: &Path) -> (Value, Value, Value) {
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new("tar")
        .arg("xf")
        .arg(archive)
        .arg("-C")
        .arg(dir))
    .unwrap_or_else(|e| panic!("{e}"));
    let json = |p: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    };
    let blob = |digest: &Value| {
        let d = digest.as_str().expect("a digest");
        let (alg, hex) = d.split_once(':').expect("alg:hex");
        json(&dir.join("blobs").join(alg).join(hex))
    };
    let index = json(&dir.join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(
        manifests.len(),
        1,
        "{}: one image: {index}",
        archive.display()
    );
    let manifest = blob(&manifests[0]["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    (index, manifest, config)
}

#[test]
fn images_are_labelled_non_root_and_run_in_their_own_root() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "scripts/images needs root (buildah), and CI runs as root"
        );
        skipped(
            "images",
            "scripts/images needs root (buildah with vfs storage)",
        );
        return;
    }
    let umoci = require_tool("umoci");
    let version = workspace_version();
    let scratch = scratch_dir("images");
    for (name, archive) in oci_archives() {
        let (index, manifest, config) = read_archive(archive, &scratch.join(name).join("layout"));
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            format!("{name}:{version}"),
            "{name}: the archive names its image and tag"
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"],
            version.as_str(),
            "{name}: {labels}"
        );
        assert_eq!(
            labels["org.opencontainers.image.title"], *name,
            "{name}: {labels}"
        );
        assert_eq!(
            labels["org.opencontainers.image.licenses"], "Apache-2.0",
            "{name}"
        );
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://")),
            "{name}: a source URL: {labels}"
        );
        assert_eq!(config["config"]["User"], "65532:65532", "{name}: non-root");
        let entrypoint = format!("/usr/local/bin/{name}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{name}: the binary is the entrypoint"
        );
        // Two layers: the runtime base (libraries, passwd, CA bundle), then the binary.
        assert_eq!(
            manifest["layers"].as_array().map(Vec::len),
            Some(2),
            "{name}: {manifest}"
        );

        // Unpacked as a runtime would, the root holds root-owned files but for the user's
        // home, and /tmp is the only world-writable directory.
        let bundle = scratch.join(name).join("bundle");
        let layout = scratch.join(name).join("layout");
        run(Command::new(&umoci)
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{name}:{version}", layout.display()))
            .arg(&bundle))
        .unwrap_or_else(|e| panic!("{e}"));
        let rootfs = bundle.join("rootfs");
        let listing = run(Command::new("find")
            .arg(".")
            .args(["-printf", "%U:%G %m %p\n"])
            .current_dir(&rootfs))
        .unwrap();
        for line in listing.lines() {
            let mut f = line.splitn(3, ' ');
            let (owner, mode, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let mode = u32::from_str_radix(mode, 8).unwrap();
            if path == "./home/nonroot" {
                assert_eq!(owner, "65532:65532", "{name}: {line}");
                continue;
            }
            assert_eq!(owner, "0:0", "{name}: root-owned: {line}");
            assert!(
                mode & 0o002 == 0 || path == "./tmp",
                "{name}: world-writable: {line}"
            );
        }
        assert!(rootfs.join(&entrypoint[1..]).is_file(), "{name}: {listing}");
        // The binary runs in that root as its user: the loader and every library it links
        // are there (a missing one fails here, not on a user's cluster). `--help` prints
        // the usage; the shop has no flags and says what it misses, in its own words.
        let out = Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg(&entrypoint)
            .arg("--help")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !matches!(out.status.code(), Some(126 | 127) | None)
                && !text.contains("error while loading shared libraries")
                && (text.contains("Usage") || text.contains(&format!("{name}: "))),
            "{name} does not start inside its image ({}): {text}",
            out.status
        );
        eprintln!(
            "[images] {name}: {} bytes, {} layers, starts as 65532 in its own root",
            archive.metadata().unwrap().len(),
            manifest["layers"].as_array().unwrap().len()
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn dockerfiles_and_scripts_images_build_the_same_binaries() {
    let printed = run(Command::new(repo_root().join("scripts/images")).arg("--print-build"))
        .unwrap_or_else(|e| panic!("{e}"));
    let version = workspace_version();
    for (arg, name, dockerfile) in IMAGES {
        let text = std::fs::read_to_string(repo_root().join(dockerfile)).unwrap();
        // The build stage's `cargo build ...` (up to the line's continuation).
        let docker_cmd = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find_map(|l| {
                l.find("cargo build")
                    .map(|i| l[i..].trim_end_matches(['\\', ' ']).to_string())
            })
            .unwrap_or_else(|| panic!("{dockerfile}: no cargo build"));
        let script_cmd = printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{arg}: ")))
            .unwrap_or_else(|| panic!("scripts/images --print-build names no {arg}: {printed}"));
        assert_eq!(
            docker_cmd, script_cmd,
            "{dockerfile} and scripts/images build {name} alike"
        );
        assert!(
            docker_cmd.contains(&format!("--bin {name}")),
            "{docker_cmd}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim() == format!("ARG VERSION={version}")),
            "{dockerfile}: `ARG VERSION={version}` (the workspace version) labels the image"
        );
        assert!(
            text.lines().any(|l| l.trim() == "FROM ${RUNTIME_BASE}"),
            "{dockerfile}: the runtime stage is FROM the base scripts/images can replace"
        );
    }
    // Other profiles build with the same flags.
    let dev = run(Command::new(repo_root().join("scripts/images")).args([
        "--print-build",
        "--profile",
        "dev",
        "node",
    ]))
    .unwrap();
    assert_eq!(
        dev.trim(),
        "node: cargo build --profile dev --locked -p tribe-node --bin tribe-node"
    );
}
