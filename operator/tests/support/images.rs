//! The container images of this build, for the pod runner's `oci:` entries: `scripts/images`
//! packages the binaries this test build already has (`--profile <this build's> --no-build`,
//! so no cargo run) into OCI archives, and the pods run inside those images: their own root
//! with only what the image holds, the image's entrypoint and user, a read-only root. A
//! missing library, a root-owned path or a wrong entrypoint then fails here.
//!
//! Built once per test process; archives newer than their binary, Dockerfile and
//! `scripts/images` are reused by the next test binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use super::{operator_bin, repo_root, run};

/// The images `scripts/images` builds: (its argument, the image and binary name, the Dockerfile).
pub const IMAGES: [(&str, &str, &str); 3] = [
    ("node", "tribe-node", "node/Dockerfile"),
    ("operator", "tribe-operator", "operator/Dockerfile"),
    ("shop", "tribe-shop", "examples/shop/Dockerfile"),
];

/// The workspace version (`[workspace.package]` of the root Cargo.toml): the images' tag.
pub fn workspace_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let section = text
        .split("[workspace.package]")
        .nth(1)
        .expect("a [workspace.package] section");
    section
        .lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .expect("a workspace version")
}

/// The cargo profile of this test build, from where its binaries are (`target/debug` is
/// `dev`), and its target directory.
pub fn build_profile() -> (String, PathBuf) {
    let dir = operator_bin().parent().expect("binary dir").to_path_buf();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let profile = if name == "debug" {
        "dev".to_string()
    } else {
        name
    };
    (profile, dir.parent().expect("target dir").to_path_buf())
}

/// `scripts/images` for `images` (their arguments) into `out`, with this build's profile
/// and binaries; `Err` with its output when it fails.
pub fn run_scripts_images(out: &Path, images: &[&str], extra: &[&str]) -> Result<String, String> {
    let (profile, target) = build_profile();
    let mut cmd = Command::new(repo_root().join("scripts/images"));
    cmd.args(["--profile", &profile, "--no-build", "--out"])
        .arg(out)
        .args(extra)
        .args(images)
        .env("CARGO_TARGET_DIR", &target);
    run(&mut cmd)
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    p.metadata().and_then(|m| m.modified()).ok()
}

/// The OCI archive of each image (by image name), built by `scripts/images` from this
/// build's binaries; panics (with what to install) when it cannot be built.
pub fn oci_archives() -> &'static BTreeMap<&'static str, PathBuf> {
    static ARCHIVES: OnceLock<BTreeMap<&'static str, PathBuf>> = OnceLock::new();
    ARCHIVES.get_or_init(|| {
        let (profile, target) = build_profile();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("images-{profile}"));
        let version = workspace_version();
        let bin_dir = operator_bin().parent().unwrap().to_path_buf();
        let script = repo_root().join("scripts/images");
        let archives: BTreeMap<&str, PathBuf> = IMAGES
            .iter()
            .map(|(_, name, _)| (*name, out.join(format!("{name}-{version}.oci.tar"))))
            .collect();
        let stale = IMAGES.iter().any(|(_, name, dockerfile)| {
            let built = mtime(&archives[name]);
            let inputs = [
                bin_dir.join(name),
                repo_root().join(dockerfile),
                script.clone(),
            ];
            built.is_none() || inputs.iter().any(|i| mtime(i) >= built)
        });
        if stale {
            let started = Instant::now();
            let names: Vec<&str> = IMAGES.iter().map(|(arg, _, _)| *arg).collect();
            let log = run_scripts_images(&out, &names, &[]).unwrap_or_else(|e| {
                panic!(
                    "scripts/images (profile {profile}, target {}) failed: {e}\n\
                     (it needs root and buildah: bash scripts/install-test-deps)",
                    target.display()
                )
            });
            eprintln!(
                "[images] built in {:?}:\n{}",
                started.elapsed(),
                log.trim_end()
            );
        }
        for (name, a) in &archives {
            assert!(
                a.is_file(),
                "scripts/images wrote no {} for {name}",
                a.display()
            );
        }
        archives
    })
}

/// images.yaml for the pod runner: each image name mapped to its OCI archive (`oci:`),
/// plus `extra` (image name, archive) entries, e.g. a second tag of an image.
pub fn oci_images_file(dir: &Path, extra: &[(&str, &Path)]) -> PathBuf {
    let names: Vec<&str> = IMAGES.iter().map(|(_, name, _)| *name).collect();
    oci_images_file_of(dir, &names, extra)
}

/// Like [`oci_images_file`], mapping only the images `names` (any other stays unmapped:
/// its pods wait with ErrImagePull).
pub fn oci_images_file_of(dir: &Path, names: &[&str], extra: &[(&str, &Path)]) -> PathBuf {
    let mut text = String::new();
    for name in names {
        let archive = &oci_archives()[name];
        text.push_str(&format!("{name}: {{oci: {}}}\n", archive.display()));
    }
    for (name, archive) in extra {
        text.push_str(&format!("\"{name}\": {{oci: {}}}\n", archive.display()));
    }
    let file = dir.join("images.yaml");
    std::fs::write(&file, text).unwrap();
    file
}
