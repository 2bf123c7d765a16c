//! `vmdk` on images in object storage: qemu-made images of every subformat uploaded to a
//! real S3 server (moto) and served by a real HTTP server (nginx) read exactly as the local
//! files do; stream and qcow2 outputs upload byte-identical to local ones; faults are clear
//! errors or transparent retries, and leave no multipart upload behind.

use std::path::Path;
use std::process::Command;
use vmdk_test_support::qemu::qemu_to_vmdk;

use crate::common::{
    self, assert_contains, qemu_create, qemu_create_sub, qemu_img, qemu_io, qemu_written, s,
    tempdir, tool, vmdk_command, Run,
};
use vmdk_test_support::servers::{env_for, files_under, FaultProxy, Moto, Nginx};
use vmdk_test_support::sparse::same_content;

/// `vmdk ARGS` with `env` (an S3 endpoint and credentials) added.
fn vmdk_env(env: &[(String, String)], args: &[&str]) -> Run {
    Run::of(
        vmdk_command(args)
            .env_remove("AWS_ENDPOINT_URL")
            .envs(env.iter().map(|(k, v)| (k, v))),
    )
}

/// Upload every file of `dir` under `s3://bucket/prefix/`.
fn upload_dir(moto: &Moto, bucket: &str, prefix: &str, dir: &Path) {
    for (name, path) in files_under(dir) {
        moto.put(
            bucket,
            &format!("{prefix}/{name}"),
            &std::fs::read(path).unwrap(),
        );
    }
}

/// One image of each kind qemu makes, each in its own directory, with data written at a
/// few places; returns (case name, directory, top file name).
fn make_cases(root: &Path) -> Vec<(&'static str, std::path::PathBuf, &'static str)> {
    let mut cases = Vec::new();
    let dir = |n: &str| {
        let d = root.join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let d = dir("sparse");
    let p = qemu_create(&d, "a.vmdk", "64M", &[]);
    qemu_io(&p, &["write -P 0x5a 1M 3M", "write -P 0x11 40M 64k"]);
    cases.push(("sparse", d, "a.vmdk"));

    let d = dir("stream");
    let src = qemu_create(&root.join("sparse"), "tmp-src.vmdk", "48M", &[]);
    qemu_io(&src, &["write -P 0x21 0 2M", "write -P 0x33 30M 5M"]);
    qemu_to_vmdk(&src, d.join("s.vmdk"), "", "subformat=streamOptimized");
    std::fs::remove_file(&src).unwrap();
    cases.push(("stream", d, "s.vmdk"));

    let d = dir("twogb");
    let p = qemu_create_sub(&d, "t.vmdk", "5G", "twoGbMaxExtentSparse");
    qemu_io(
        &p,
        &[
            "write -P 0x44 1M 1M",
            "write -P 0x45 2047M 2M",
            "write -P 0x46 4600M 1M",
        ],
    );
    cases.push(("twogb", d, "t.vmdk"));

    let d = dir("flat");
    let p = qemu_create_sub(&d, "f.vmdk", "16M", "monolithicFlat");
    qemu_io(&p, &["write -P 0x66 3M 2M"]);
    cases.push(("flat", d, "f.vmdk"));

    let d = dir("chain");
    let base = qemu_written(&d, "base.vmdk", "32M", &["write -P 0x01 0 8M"]);
    let mid = common::qemu_child(&d, "mid.vmdk", &base, None);
    qemu_io(&mid, &["write -P 0x02 4M 8M"]);
    let top = common::qemu_child(&d, "top.vmdk", &mid, None);
    qemu_io(&top, &["write -P 0x03 10M 1M", "write -z 1M 1M"]);
    cases.push(("chain", d, "top.vmdk"));
    cases
}

/// `qemu-img convert -O raw` of a local image.
fn qemu_raw(img: &Path, out: &Path) -> Vec<u8> {
    qemu_img(&["convert", "-O", "raw", &s(img), &s(out)]);
    std::fs::read(out).unwrap()
}

/// What `info --output json` says that does not depend on where the files are.
fn info_core(v: &serde_json::Value) -> String {
    let mut v = v.clone();
    let o = v.as_object_mut().unwrap();
    for k in [
        "filename",
        "children",
        "actual-size",
        "full-backing-filename",
    ] {
        o.remove(k);
    }
    if let Some(exts) = v
        .pointer_mut("/format-specific/data/extents")
        .and_then(|e| e.as_array_mut())
    {
        for e in exts {
            e.as_object_mut().unwrap().remove("filename");
        }
    }
    v.to_string()
}

#[test]
fn every_subformat_reads_from_s3_and_http_like_the_local_file() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    let env = moto.env();
    let tmp = tempdir();
    let root = tmp.path().join("www");
    let cases = make_cases(&root);
    let nginx = Nginx::start(&root);
    for (case, dir, _) in &cases {
        upload_dir(&moto, "bkt", &format!("img/{case}"), dir);
    }
    // The cases are independent: checked side by side (each a few dozen commands, most of
    // their time spent waiting for the servers).
    let check_case = |case: &str, dir: &Path, top: &str| {
        let local = dir.join(top);
        // Compared by their data (the twoGbMaxExtentSparse case is 5 GiB of mostly holes).
        let want = tmp.path().join(format!("{case}.ref"));
        qemu_img(&["convert", "-O", "raw", &s(&local), &s(&want)]);
        for url in [
            format!("s3://bkt/img/{case}/{top}"),
            nginx.url(&format!("{case}/{top}")),
        ] {
            let what = format!("{case} from {url}");
            let remote = vmdk_env(&env, &["info", "--output", "json", "--backing-chain", &url]);
            let here = vmdk_env(
                &env,
                &["info", "--output", "json", "--backing-chain", &s(&local)],
            );
            let (r, h) = (remote.json(), here.json());
            remote.expect(0, &what);
            let (r, h) = (r.as_array().unwrap(), h.as_array().unwrap());
            assert_eq!(r.len(), h.len(), "{what}: chain length");
            for (a, b) in r.iter().zip(h) {
                assert_eq!(info_core(a), info_core(b), "{what}: info");
            }
            let out = tmp.path().join(format!("{case}.{}.out", url.len()));
            let r = vmdk_env(&env, &["convert", "-p", "-O", "raw", &url, &s(&out)]);
            assert_contains!(r.stderr, "(100.00/100%)", "{what}: progress");
            r.expect(0, &what);
            assert!(same_content(&out, &want), "{what}: converted data differs");
            let c = vmdk_env(&env, &["compare", &url, &s(&local)]);
            assert_eq!(
                c.stdout.trim(),
                "Images are identical.",
                "{what}: {}",
                c.stderr
            );
            c.expect(0, &what);
        }
    };
    std::thread::scope(|scope| {
        for (case, dir, top) in &cases {
            scope.spawn(|| check_case(case, dir, top));
        }
    });
    // A remote chain's `map` and `check` work too.
    let url = "s3://bkt/img/chain/top.vmdk";
    let m = vmdk_env(&env, &["map", "--output", "json", url]).expect(0, "map");
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert!(
        m.as_array()
            .unwrap()
            .iter()
            .any(|e| e["depth"] == 2 && e["data"] == true),
        "the base's data shows at depth 2: {m}"
    );
    vmdk_env(&env, &["check", url]).expect(0, "check");
}

/// Mask the values that are random in every new image (CID, UUID) so two conversions of
/// one source compare equal.
fn mask_random(mut b: Vec<u8>) -> Vec<u8> {
    for key in [&b"CID="[..], b"ddb.uuid.image = \""] {
        let mut i = 0;
        while let Some(p) = b[i..].windows(key.len()).position(|w| w == key) {
            let mut j = i + p + key.len();
            while j < b.len() && b[j] != b'\n' && b[j] != b'"' {
                b[j] = b'#';
                j += 1;
            }
            i = j;
        }
    }
    b
}

#[test]
fn stream_outputs_upload_byte_identical_and_random_access_ones_are_refused() {
    let moto = Moto::start(&[]);
    moto.create_bucket("out");
    let env = moto.env();
    let tmp = tempdir();
    // Incompressible data too, so the upload has several parts.
    let mut disk = vec![0u8; 40 << 20];
    for (i, b) in disk[..12 << 20].iter_mut().enumerate() {
        *b = ((i as u32).wrapping_mul(2654435761) >> 13) as u8;
    }
    disk[33 << 20..35 << 20].fill(0x99);
    let raw = tmp.path().join("disk.raw");
    std::fs::write(&raw, &disk).unwrap();
    let src = tmp.path().join("src.vmdk");
    qemu_to_vmdk(&raw, &src, "raw", "");

    // The same file name as the object: the descriptor names its extent by it.
    std::fs::create_dir(tmp.path().join("local")).unwrap();
    let local = tmp.path().join("local/s.vmdk");
    let o = ["-o", "subformat=streamOptimized"];
    vmdk_env(
        &env,
        &["convert", "-O", "vmdk", o[0], o[1], &s(&src), &s(&local)],
    )
    .expect(0, "local stream output");
    let r = vmdk_env(
        &env,
        &[
            "-v",
            "convert",
            "-p",
            "-O",
            "vmdk",
            o[0],
            o[1],
            &s(&src),
            "s3://out/d/s.vmdk",
        ],
    );
    let err = r.stderr.clone();
    r.expect(0, "stream output to s3");
    assert!(
        err.contains("object storage:") && err.contains("requests"),
        "{err}"
    );
    let got = moto.get("out", "d/s.vmdk");
    let here = std::fs::read(&local).unwrap();
    assert_eq!(got.len(), here.len(), "uploaded stream image length");
    let (a, b) = (mask_random(got.clone()), mask_random(here));
    let diff = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(diff, None, "uploaded stream image differs");
    let dl = tmp.path().join("dl.vmdk");
    std::fs::write(&dl, &got).unwrap();
    let c = qemu_img(&["check", &s(&dl)]);
    assert!(c.contains("No errors were found"), "{c}");
    assert!(
        qemu_raw(&dl, &tmp.path().join("a.raw")) == qemu_raw(&src, &tmp.path().join("b.raw")),
        "the uploaded image holds other data"
    );

    // Raw output streams too, holes written as zeros.
    vmdk_env(
        &env,
        &["convert", "-O", "raw", &s(&src), "s3://out/d/r.raw"],
    )
    .expect(0, "raw");
    assert!(moto.get("out", "d/r.raw") == std::fs::read(tmp.path().join("b.raw")).unwrap());

    // Random-access outputs cannot be uploaded as they are written.
    for sub in ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse"] {
        let r = vmdk_env(
            &env,
            &[
                "convert",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                &s(&src),
                "s3://out/m.vmdk",
            ],
        );
        assert_eq!(r.code, 1, "{sub}: {}", r.stderr);
        assert_contains!(r.stderr, "front to back", "{sub}");
        assert!(!moto.exists("out", "m.vmdk"));
    }
    // Over the source itself: refused before anything is written.
    moto.put("out", "self.raw", &[1u8; 4096]);
    let r = vmdk_env(
        &env,
        &[
            "convert",
            "-O",
            "raw",
            "s3://out/self.raw",
            "s3://out/self.raw",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_contains!(r.stderr, "refusing to overwrite");
    assert_eq!(moto.open_uploads("out"), 0);
}

#[test]
fn qcow2_outputs_upload_as_the_local_file() {
    let moto = Moto::start(&[]);
    moto.create_bucket("qcw");
    let env = moto.env();
    let tmp = tempdir();
    // Incompressible data over several 8 MiB parts, a compressible stretch and holes.
    let mut disk = vec![0u8; 48 << 20];
    for (i, b) in disk[..20 << 20].iter_mut().enumerate() {
        *b = ((i as u32).wrapping_mul(2654435761) >> 13) as u8;
    }
    disk[30 << 20..33 << 20].fill(0x5c);
    disk[(47 << 20) + 100..(47 << 20) + 5000].fill(0x01);
    let raw = tmp.path().join("disk.raw");
    std::fs::write(&raw, &disk).unwrap();
    let src = tmp.path().join("src.vmdk");
    qemu_to_vmdk(&raw, &src, "raw", "");

    for (case, extra) in [
        ("plain", &[][..]),
        ("compressed", &["-c"][..]),
        ("v2-4k", &["-o", "compat=0.10,cluster_size=4k"][..]),
    ] {
        let local = tmp.path().join(format!("{case}.qcow2"));
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend_from_slice(extra);
        let src_s = s(&src);
        let local_s = s(&local);
        let url = format!("s3://qcw/out/{case}.qcow2");
        vmdk_env(&env, &[&args[..], &[&src_s, &local_s]].concat()).expect(0, "local qcow2");
        vmdk_env(&env, &[&args[..], &[&src_s, &url]].concat()).expect(0, "qcow2 to s3");
        let got = moto.get("qcw", &format!("out/{case}.qcow2"));
        let dl = tmp.path().join(format!("{case}-dl.qcow2"));
        std::fs::write(&dl, &got).unwrap();
        let c = qemu_img(&["check", &s(&dl)]);
        assert!(c.contains("No errors were found"), "{case}: {c}");
        qemu_img(&["compare", "-q", &s(&raw), &s(&dl)]);
        assert!(
            got == std::fs::read(&local).unwrap(),
            "{case}: the uploaded qcow2 differs from the local one"
        );
    }
    // preallocation=metadata writes all over the file: refused, nothing left behind.
    let r = vmdk_env(
        &env,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "preallocation=metadata",
            &s(&src),
            "s3://qcw/out/p.qcow2",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_contains!(r.stderr, "preallocation");
    assert!(!moto.exists("qcw", "out/p.qcow2"));
    assert_eq!(moto.open_uploads("qcw"), 0);
}

#[test]
fn a_failed_upload_leaves_no_parts_behind() {
    let moto = Moto::start(&[]);
    moto.create_bucket("out");
    let tmp = tempdir();
    // The source is read over HTTP, slowly (small blocks, one request at a time); its
    // server dies once the upload of the output is under way.
    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let mut disk = vec![0u8; 64 << 20];
    for (i, b) in disk.iter_mut().enumerate() {
        *b = ((i as u32).wrapping_mul(2654435761) >> 11) as u8;
    }
    std::fs::write(www.join("disk.raw"), &disk).unwrap();
    let mut nginx = Nginx::start(&www);
    let mut env = moto.env();
    env.push(("VMDK_OBJECT_BLOCK_KIB".into(), "64".into()));
    env.push(("VMDK_OBJECT_REQUESTS".into(), "1".into()));
    env.push(("VMDK_OBJECT_RETRIES".into(), "1".into()));
    env.push(("VMDK_OBJECT_RETRY_TIMEOUT_SECS".into(), "2".into()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmdk"))
        .args(["convert", "-m", "1", "-f", "raw", "-O", "raw"])
        .arg(nginx.url("disk.raw"))
        .arg("s3://out/copy.raw")
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while moto.open_uploads("out") == 0 || moto.logged_requests() < 4 {
        assert!(t.elapsed().as_secs() < 60, "the upload never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "convert ended too soon"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nginx.kill();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("disk.raw"), "{err}");
    assert_eq!(
        moto.open_uploads("out"),
        0,
        "a failed upload left its parts"
    );
    assert!(!moto.exists("out", "copy.raw"));
}

#[test]
fn faults_are_retried_or_clear_errors() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    moto.create_bucket("other-bucket");
    let tmp = tempdir();
    let img = qemu_create(tmp.path(), "a.vmdk", "64M", &[]);
    qemu_io(&img, &["write -P 0x5a 0 24M", "write -P 0x11 40M 8M"]);
    moto.put("bkt", "d/a.vmdk", &std::fs::read(&img).unwrap());
    let want = qemu_raw(&img, &tmp.path().join("ref.raw"));

    // A 503 every 4th request: retried, same data, counted in the summary.
    let proxy = FaultProxy::start(moto.port, 4);
    let env = env_for(&proxy.endpoint());
    let out = tmp.path().join("out.raw");
    let r = vmdk_env(
        &env,
        &["-v", "convert", "-O", "raw", "s3://bkt/d/a.vmdk", &s(&out)],
    );
    let err = r.stderr.clone();
    r.expect(0, "convert through 503s");
    assert!(
        std::fs::read(&out).unwrap() == want,
        "data read through retries differs"
    );
    let retried = err
        .lines()
        .find(|l| l.contains("object storage:"))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(!retried.contains(" 0 retried"), "{retried}");

    // A descriptor naming a file in another bucket.
    moto.put("other-bucket", "x", &[0u8; 1 << 20]);
    let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"../other-bucket/x\" 0\n\n\
                ddb.adapterType = \"ide\"\n";
    moto.put("bkt", "evil.vmdk", desc.as_bytes());
    let env = moto.env();
    let r = vmdk_env(&env, &["info", "s3://bkt/evil.vmdk"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_contains!(r.stderr, "outside the image's directory");
    let r = vmdk_env(
        &env,
        &["convert", "-O", "raw", "s3://bkt/evil.vmdk", &s(&out)],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);

    // A missing object, and a missing bucket.
    let r = vmdk_env(&env, &["info", "s3://bkt/nothing.vmdk"]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stderr, "no such object");

    // The server killed mid-convert: an error naming the object, well before the default
    // retry budget.
    let mut env = moto.env();
    env.push(("VMDK_OBJECT_BLOCK_KIB".into(), "64".into()));
    env.push(("VMDK_OBJECT_REQUESTS".into(), "1".into()));
    env.push(("VMDK_OBJECT_RETRIES".into(), "2".into()));
    env.push(("VMDK_OBJECT_RETRY_TIMEOUT_SECS".into(), "3".into()));
    let start = moto.logged_requests();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmdk"))
        .args([
            "convert",
            "-m",
            "1",
            "-O",
            "raw",
            "s3://bkt/d/a.vmdk",
            &s(&out),
        ])
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while moto.logged_requests() < start + 20 {
        assert!(t.elapsed().as_secs() < 60, "convert made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "convert ended before the server died"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut moto = moto;
    moto.kill();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("s3://bkt/d/a.vmdk"), "{err}");
    assert!(t.elapsed().as_secs() < 60);
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    // moto checks credentials when told to; none it knows are given.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let r = vmdk_env(&moto.env(), &["info", "s3://bkt/a.vmdk"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("access denied") && r.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        r.stderr
    );
    let tmp = tempdir();
    let raw = tmp.path().join("x.raw");
    std::fs::write(&raw, [7u8; 4096]).unwrap();
    let r = vmdk_env(
        &moto.env(),
        &["convert", "-O", "raw", &s(&raw), "s3://bkt/o.raw"],
    );
    assert_contains!(r.stderr, "access denied");
    assert_eq!(r.code, 1, "{}", r.stderr);
}

/// `vmdk ARGS` with no AWS settings in the environment but `env` (HOME, AWS_PROFILE, ...):
/// whatever else it needs must come from the shared config files.
fn vmdk_profile(env: &[(&str, String)], args: &[&str]) -> Run {
    let mut c = vmdk_command(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    // No instance metadata service to wait for when a profile gives nothing.
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    Run::of(c.envs(env.iter().map(|(k, v)| (k, v))))
}

#[test]
fn credentials_region_and_endpoint_come_from_aws_profiles() {
    let moto = Moto::start(&[]);
    moto.create_bucket("prof");
    let tmp = tempdir();
    let img = qemu_written(tmp.path(), "a.vmdk", "16M", &["write -P 0x3c 1M 2M"]);
    let want = qemu_raw(&img, &tmp.path().join("ref.raw"));

    // The default profile of ~/.aws, in a HOME of the test's own.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!(
            "[default]\nregion = us-east-1\nendpoint_url = {}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    std::fs::write(
        home.join(".aws/credentials"),
        "[default]\naws_access_key_id = profilekey\naws_secret_access_key = profilesecret\n",
    )
    .unwrap();
    let env = [("HOME", s(&home))];
    vmdk_profile(
        &env,
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            &s(&img),
            "s3://prof/a.vmdk",
        ],
    )
    .expect(0, "upload with the default profile");
    let out = tmp.path().join("out.raw");
    vmdk_profile(
        &env,
        &["convert", "-O", "raw", "s3://prof/a.vmdk", &s(&out)],
    )
    .expect(0, "download with the default profile");
    assert!(
        std::fs::read(&out).unwrap() == want,
        "default profile: data differs"
    );
    // Without the files, the same command has no credentials: the profile gave them.
    let r = vmdk_profile(
        &[("HOME", s(&tmp.path().join("nohome")))],
        &["info", "s3://prof/a.vmdk"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);

    // A named profile in files named by AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE.
    let (cfg, cred) = (tmp.path().join("cfg"), tmp.path().join("cred"));
    std::fs::write(
        &cfg,
        format!(
            "[profile vm]\nregion = eu-west-1\nendpoint_url = {}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    std::fs::write(
        &cred,
        "[vm]\naws_access_key_id = vmkey\naws_secret_access_key = vmsecret\n",
    )
    .unwrap();
    let env = [
        ("HOME", s(&tmp.path().join("nohome"))),
        ("AWS_PROFILE", "vm".to_string()),
        ("AWS_CONFIG_FILE", s(&cfg)),
        ("AWS_SHARED_CREDENTIALS_FILE", s(&cred)),
    ];
    let i = vmdk_profile(&env, &["info", "--output", "json", "s3://prof/a.vmdk"]);
    assert_eq!(i.json()["virtual-size"], 16 << 20);
    i.expect(0, "info with AWS_PROFILE=vm");

    // A profile the files do not hold.
    let mut env2 = env.clone();
    env2[1].1 = "nope".into();
    let r = vmdk_profile(&env2, &["info", "s3://prof/a.vmdk"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("\"nope\"")
            && r.stderr.contains("AWS_PROFILE")
            && r.stderr.contains("vm"),
        "{}",
        r.stderr
    );

    // credential_process (run by the SDK's provider), and a role chain, which needs STS.
    std::fs::write(
        &cred,
        "[vm]\ncredential_process = echo '{\"Version\": 1, \"AccessKeyId\": \"pk\", \
         \"SecretAccessKey\": \"ps\"}'\n[role]\nrole_arn = arn:aws:iam::1:role/r\n\
         source_profile = vm\n",
    )
    .unwrap();
    vmdk_profile(&env, &["info", "s3://prof/a.vmdk"]).expect(0, "credential_process");
    let mut env3 = env.clone();
    env3[1].1 = "role".into();
    let r = vmdk_profile(&env3, &["info", "s3://prof/a.vmdk"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("role_arn") && r.stderr.contains("export"),
        "{}",
        r.stderr
    );
    std::fs::write(
        &cred,
        "[vm]\naws_access_key_id = vmkey\naws_secret_access_key = vmsecret\n",
    )
    .unwrap();

    // Wrong keys in the profile, against a server that checks them: access denied.
    let strict = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    std::fs::write(
        &cfg,
        format!(
            "[profile vm]\nregion = us-east-1\nendpoint_url = {}\n",
            strict.endpoint()
        ),
    )
    .unwrap();
    let r = vmdk_profile(&env, &["info", "s3://prof/a.vmdk"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("access denied") && r.stderr.contains("AWS_PROFILE"),
        "{}",
        r.stderr
    );
}

/// Bytes of incompressible data (so archives span several upload parts).
fn noise(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32 ^ seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// `bytes` of an OVA with what differs between two `ova create` runs of the same disks
/// masked: tar mtimes and checksums, the disks' CIDs and UUIDs, the manifest's digests.
fn mask_ova(bytes: &[u8]) -> Vec<u8> {
    let mut b = mask_random(bytes.to_vec());
    let mut at = 0usize;
    while at + 512 <= b.len() && b[at] != 0 {
        let size = std::str::from_utf8(&b[at + 124..at + 136])
            .unwrap()
            .trim_matches(|c: char| c == '\0' || c == ' ');
        let size = u64::from_str_radix(size, 8).unwrap() as usize;
        b[at + 136..at + 156].fill(b'#');
        let name = String::from_utf8_lossy(&b[at..at + 100]).into_owned();
        if name.trim_end_matches('\0').ends_with(".mf") {
            for byte in &mut b[at + 512..at + 512 + size] {
                if byte.is_ascii_hexdigit() {
                    *byte = b'#';
                }
            }
        }
        at += 512 + size.next_multiple_of(512);
    }
    b
}

#[test]
fn remote_ovas_read_in_place_and_ova_create_uploads_to_s3() {
    let moto = Moto::start(&[]);
    moto.create_bucket("ova");
    let env = moto.env();
    let tmp = tempdir();
    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    // Two disks, with incompressible data: the archive is three upload parts or more, the
    // second disk's header lying inside one of them.
    let mut d = Vec::new();
    for (i, (size, mib)) in [(32usize, 11usize), (24, 6)].into_iter().enumerate() {
        let mut raw = vec![0u8; size << 20];
        raw[1 << 20..(1 + mib) << 20].copy_from_slice(&noise(mib << 20, i as u32));
        raw[(size - 2) << 20..].fill(0x5a + i as u8);
        let r = tmp.path().join(format!("d{i}.raw"));
        std::fs::write(&r, &raw).unwrap();
        let v = tmp.path().join(format!("d{i}.vmdk"));
        qemu_to_vmdk(&r, &v, "raw", "");
        d.push((r, v));
    }
    let local = www.join("app.ova");
    vmdk_env(
        &env,
        &["ova", "create", "-o", &s(&local), &s(&d[0].1), &s(&d[1].1)],
    )
    .expect(0, "local ova create");
    moto.put("ova", "in/app.ova", &std::fs::read(&local).unwrap());
    let nginx = Nginx::start(&www);
    let here_info = vmdk_env(&env, &["ova", "info", "--output", "json", &s(&local)]).json();

    for url in ["s3://ova/in/app.ova".to_string(), nginx.url("app.ova")] {
        // ova info: the same report, every digest checked.
        let r = vmdk_env(&env, &["ova", "info", "--output", "json", &url]);
        let info = r.json();
        r.expect(0, &format!("ova info {url}"));
        assert_eq!(info, here_info, "ova info of {url}");
        // The bare archive is its first disk; members by name.
        let i = vmdk_env(&env, &["info", "--output", "json", &url]);
        assert_eq!(i.json()["virtual-size"], 32 << 20, "{url}");
        i.expect(0, &format!("info {url}"));
        for (n, (raw, _)) in d.iter().enumerate() {
            let member = format!("{url}/app-disk{}.vmdk", n + 1);
            let out = tmp.path().join("m.raw");
            vmdk_env(&env, &["convert", "-O", "raw", &member, &s(&out)])
                .expect(0, &format!("convert {member}"));
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(raw).unwrap(),
                "{member}: data differs"
            );
            let want = tmp.path().join("l.raw");
            let lm = format!("{}/app-disk{}.vmdk", s(&local), n + 1);
            vmdk_env(&env, &["convert", "-O", "raw", &lm, &s(&want)]).expect(0, "local member");
            assert!(std::fs::read(&out).unwrap() == std::fs::read(&want).unwrap());
            let c = vmdk_env(&env, &["compare", &member, &s(raw)]);
            assert_eq!(c.stdout.trim(), "Images are identical.", "{}", c.stderr);
        }
        let r = vmdk_env(&env, &["info", &format!("{url}/nothing.vmdk")]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_contains!(r.stderr, "no member");
    }

    // ova create straight into S3: the same archive as the local one (but for what differs
    // in every run), which qemu and our reader accept, and no upload left open.
    let r = vmdk_env(
        &env,
        &[
            "ova",
            "create",
            "-o",
            "s3://ova/out/app.ova",
            &s(&d[0].1),
            &s(&d[1].1),
        ],
    );
    r.expect(0, "ova create to s3");
    assert_eq!(moto.open_uploads("ova"), 0);
    let got = moto.get("ova", "out/app.ova");
    let here = std::fs::read(&local).unwrap();
    assert_eq!(got.len(), here.len(), "uploaded OVA length");
    let (a, b) = (mask_ova(&got), mask_ova(&here));
    assert_eq!(
        a.iter().zip(&b).position(|(x, y)| x != y),
        None,
        "the uploaded OVA differs from the local one"
    );
    let dl = tmp.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    std::fs::write(dl.join("app.ova"), &got).unwrap();
    let r = vmdk_env(
        &env,
        &["ova", "info", "--output", "json", &s(&dl.join("app.ova"))],
    );
    let info = r.json();
    r.expect(0, "ova info of the uploaded OVA");
    assert!(info["digests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["status"] == "ok"));
    let st = Command::new("tar")
        .args(["-xf", "app.ova"])
        .current_dir(&dl)
        .status()
        .unwrap();
    assert!(st.success());
    for (n, (raw, _)) in d.iter().enumerate() {
        let disk = dl.join(format!("app-disk{}.vmdk", n + 1));
        let c = qemu_img(&["check", &s(&disk)]);
        assert!(c.contains("No errors were found"), "{c}");
        qemu_img(&["compare", "-f", "vmdk", "-F", "raw", &s(&disk), &s(raw)]);
    }

    // Killed mid-way (its source's server dies): the upload is aborted, nothing is left.
    let src = www.join("big.raw");
    std::fs::write(&src, noise(48 << 20, 9)).unwrap();
    let mut env = moto.env();
    env.push(("VMDK_OBJECT_BLOCK_KIB".into(), "64".into()));
    env.push(("VMDK_OBJECT_REQUESTS".into(), "1".into()));
    env.push(("VMDK_OBJECT_RETRIES".into(), "1".into()));
    env.push(("VMDK_OBJECT_RETRY_TIMEOUT_SECS".into(), "2".into()));
    let mut nginx = nginx;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmdk"))
        .args([
            "ova",
            "create",
            "-m",
            "1",
            "-f",
            "raw",
            "-o",
            "s3://ova/out/bad.ova",
        ])
        .arg(nginx.url("big.raw"))
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while moto.open_uploads("ova") == 0 || moto.logged_requests() < 4 {
        assert!(t.elapsed().as_secs() < 60, "the upload never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "ova create ended too soon"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nginx.kill();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        moto.open_uploads("ova"),
        0,
        "a failed upload left its parts"
    );
    assert!(!moto.exists("ova", "out/bad.ova"));
}

#[test]
fn remote_info_shows_the_protocol_as_qemu_does() {
    let tmp = tempdir();
    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    qemu_written(&www, "a.vmdk", "64M", &["write -P 1 1M 2M"]);
    std::fs::write(www.join("r.raw"), vec![3u8; 1 << 20]).unwrap();
    let nginx = Nginx::start(&www);
    for name in ["a.vmdk", "r.raw"] {
        let url = nginx.url(name);
        let ours = vmdk_env(&[], &["info", "--output", "json", &url]).json();
        let out = tool("qemu-img", &["info", "--output", "json", &url]).expect(0, name);
        let theirs: serde_json::Value = serde_json::from_str(&out).unwrap();
        // qemu-img reads through its curl driver (qemu-block-extra); the child node and
        // the absent allocation must agree.
        assert_eq!(ours["children"], theirs["children"], "{name}: children");
        assert_eq!(ours.get("actual-size"), None, "{name}");
        let human = vmdk_env(&[], &["info", &url]).expect(0, name);
        let qh = String::from_utf8_lossy(
            &Command::new("qemu-img")
                .args(["info", &url])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        for line in [
            "disk size: unavailable",
            "protocol type: http",
            "file length:",
        ] {
            let pick = |t: &str| {
                t.lines()
                    .filter(|l| l.contains(line))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            assert_eq!(pick(&human), pick(&qh), "{name}: {line}");
        }
    }
}

#[test]
fn a_descriptor_inside_a_remote_ova_costs_a_request_per_extent_not_six() {
    // A twoGbMaxExtentSparse disk of ten extent files in a tar: opening it names ten
    // members, each routed through the archive object. Whether the archive exists is asked
    // once, not for every resolve, identity and open of every line (65 requests before).
    let moto = Moto::start(&[]);
    moto.create_bucket("split");
    let tmp = tempdir();
    let d = tmp.path();
    qemu_create_sub(d, "d.vmdk", "20G", "twoGbMaxExtentSparse");
    qemu_io(&d.join("d.vmdk"), &["write -P 7 3G 64k"]);
    let mut members = vec!["d.vmdk".to_string()];
    members.extend((1..=10).map(|i| format!("d-s{i:03}.vmdk")));
    let mut tar = Command::new("tar");
    tar.arg("cf")
        .arg(d.join("x.ova"))
        .arg("-C")
        .arg(d)
        .args(&members);
    assert!(tar.status().unwrap().success());
    moto.put("split", "x.ova", &std::fs::read(d.join("x.ova")).unwrap());
    let r = vmdk_env(
        &moto.env(),
        &["-v", "info", "--output", "json", "s3://split/x.ova/d.vmdk"],
    );
    assert_eq!(r.json()["virtual-size"], 20u64 << 30);
    let requests: usize = r
        .stderr
        .split_once("object storage: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count: {}", r.stderr));
    assert!(
        requests <= 2 * members.len(),
        "{requests} requests: {}",
        r.stderr
    );
    let out = d.join("out.raw");
    vmdk_env(
        &moto.env(),
        &["convert", "-O", "raw", "s3://split/x.ova/d.vmdk", &s(&out)],
    )
    .expect(0, "convert out of the remote OVA");
    let got = std::fs::File::open(&out).unwrap();
    let mut buf = vec![0u8; 65536];
    std::os::unix::fs::FileExt::read_exact_at(&got, &mut buf, 3 << 30).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
}

#[test]
fn same_content_compares_data_and_holes_as_zeros() {
    // The comparison the tests above rely on for multi-GiB outputs.
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let write = |p: &Path, at: u64, data: &[u8]| {
        let f = std::fs::File::options()
            .create(true)
            .write(true)
            .truncate(false)
            .open(p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(data, at).unwrap();
    };
    write(&a, 40 << 20, b"same");
    write(&b, 40 << 20, b"same");
    assert!(same_content(&a, &b));
    write(&b, 50 << 20, b"x");
    assert!(!same_content(&a, &b));
    // Zeros written are the same as a hole.
    write(&a, 50 << 20, b"x");
    write(&a, 60 << 20, &[0; 4096]);
    assert!(same_content(&a, &b));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(1)
        .unwrap();
    assert!(!same_content(&a, &b));
}
