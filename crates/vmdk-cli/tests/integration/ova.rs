//! OVA appliances, against independent tools.
//!
//! * Our OVAs: `tar -tvf` lists `.ovf`, `.mf`, then the disks; `xmllint` finds the OVF
//!   well-formed; `sha256sum -c` on the extracted members agrees with the manifest;
//!   `qemu-img check` accepts every disk and `qemu-img compare` finds it equal to its
//!   source; the OVF has the structure of VMware's own templates (open-vmdk).
//! * Reading: OVAs built with `tar` around the real VMware and VirtualBox stream disks of
//!   `shared/samples/realworld/`, with VirtualBox- and VMware-style OVFs, read in place by
//!   `info`, `map`, `check`, `compare` and `convert` exactly as the extracted disk reads.
//! * Hostile archives and descriptors are refused with a message, never a panic.

use std::path::{Path, PathBuf};

use crate::common::*;

fn samples() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("../shared/samples/realworld");
    assert!(
        dir.join("README.md").is_file(),
        "the real-world VMDK samples are missing: expected them in {}",
        dir.display()
    );
    dir.canonicalize().expect("canonical samples path")
}

/// `tar -cf OUT -C DIR MEMBERS...` (GNU format, as ovftool-era tools write).
fn tar_create(out: &Path, dir: &Path, members: &[&str]) {
    let mut args = vec![
        "--format=gnu".to_string(),
        "-cf".into(),
        s(out),
        "-C".into(),
        s(dir),
    ];
    args.extend(members.iter().map(|m| m.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("tar", &a).expect(0, "tar -c");
}

/// Hex SHA-1 / SHA-256 of a file, by the coreutils tools.
fn digest(tool_name: &str, f: &Path) -> String {
    let out = tool(tool_name, &[&s(f)]).expect(0, tool_name);
    out.split_whitespace().next().unwrap().to_string()
}

/// A disk with data, zeros and holes: 6 MiB raw.
fn raw_disk(dir: &Path) -> PathBuf {
    let p = dir.join("data.raw");
    let mut d = vec![0u8; 6 << 20];
    for (i, b) in d[..(1 << 20)].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    d[(4 << 20) + 17..(4 << 20) + 5000].fill(0xab);
    std::fs::write(&p, d).unwrap();
    p
}

/// The `rasd:` child names of each `<Item>` of `ovf`, in order.
fn item_children(ovf: &str) -> Vec<Vec<String>> {
    ovf.split("<Item")
        .skip(1)
        .map(|item| {
            let body = &item[..item.find("</Item>").unwrap()];
            body.split("<rasd:")
                .skip(1)
                .map(|t| t[..t.find('>').unwrap()].to_string())
                .collect()
        })
        .collect()
}

#[test]
fn our_ova_is_ordered_well_formed_and_verifiable() {
    let dir = tempdir();
    let d = dir.path();
    let raw = raw_disk(d);
    let sparse = d.join("second.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", &s(&raw), &s(&sparse)]);
    let ova = d.join("app.ova");
    vmdk_ok(&[
        "ova",
        "create",
        "-o",
        &s(&ova),
        "--name",
        "My <App>",
        "--cpus",
        "4",
        "--memory",
        "2048",
        "--hw",
        "vmx-17",
        "--firmware",
        "efi",
        "--controller",
        "pvscsi",
        &s(&raw),
        &s(&sparse),
    ]);

    // Member order, as vSphere reads a streamed OVA.
    let list = tool("tar", &["-tf", &s(&ova)]).expect(0, "tar -t");
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(
        names,
        ["app.ovf", "app.mf", "app-disk1.vmdk", "app-disk2.vmdk"]
    );
    tool("tar", &["-tvf", &s(&ova)]).expect(0, "tar -tv");

    let x = d.join("x");
    std::fs::create_dir(&x).unwrap();
    tool("tar", &["-xf", &s(&ova), "-C", &s(&x)]).expect(0, "tar -x");
    tool("xmllint", &["--noout", &s(&x.join("app.ovf"))]).expect(0, "xmllint");

    // The manifest, checked by sha256sum.
    let mf = std::fs::read_to_string(x.join("app.mf")).unwrap();
    assert_eq!(mf.lines().count(), 3, "{mf}");
    for line in mf.lines() {
        let (alg_file, hex) = line.split_once(")= ").unwrap();
        let file = alg_file.strip_prefix("SHA256(").unwrap();
        assert_eq!(digest("sha256sum", &x.join(file)), hex, "{file}");
    }

    // Each disk, by qemu-img.
    for (member, src) in [("app-disk1.vmdk", &raw), ("app-disk2.vmdk", &sparse)] {
        let m = x.join(member);
        qemu_img(&["check", &s(&m)]);
        qemu_img(&["compare", &s(src), &s(&m)]);
        let info = qemu_img(&["info", "--output=json", &s(&m)]);
        assert!(info.contains("streamOptimized"), "{info}");
        // ... and by libvmdk (Debian's python3-libvmdk, which .ci/run installs): it reads
        // the same bytes qemu-img does.
        let script = "import hashlib, pyvmdk, sys\n\
                      h = pyvmdk.handle(); h.open(sys.argv[1]); h.open_extent_data_files()\n\
                      d = hashlib.sha256(); left = h.get_media_size()\n\
                      while left:\n    b = h.read_buffer(min(left, 1 << 20)); d.update(b); left -= len(b)\n\
                      print(d.hexdigest())";
        let by_libvmdk = tool("/usr/bin/python3", &["-c", script, &s(&m)]).expect(0, "pyvmdk");
        let qraw = d.join(format!("{member}.raw"));
        qemu_img(&["convert", "-O", "raw", &s(&m), &s(&qraw)]);
        assert_eq!(
            by_libvmdk.trim(),
            digest("sha256sum", &qraw),
            "{member}: libvmdk"
        );
    }

    // The OVF's structure: VMware's template (open-vmdk templates/template-hw14-bios.ovf)
    // has, in this order, Envelope sections References, DiskSection, NetworkSection,
    // VirtualSystem; hardware items of ResourceType 3 (CPU), 4 (memory), 6 (SCSI), 5, 5
    // (IDE), 24 (video), 1 (VMCI), 15 (CD), 17 (disk), 10 (NIC); each item's rasd children
    // sorted by name; vmw:osType on the OS section; vmw:Config settings after the items.
    let ovf = std::fs::read_to_string(x.join("app.ovf")).unwrap();
    let pos = |t: &str| ovf.find(t).unwrap_or_else(|| panic!("{t} missing:\n{ovf}"));
    assert!(pos("<References>") < pos("<DiskSection>"));
    assert!(pos("<DiskSection>") < pos("<NetworkSection>"));
    assert!(pos("<NetworkSection>") < pos("<VirtualSystem "));
    assert!(pos("<OperatingSystemSection") < pos("<VirtualHardwareSection>"));
    assert!(ovf.contains("vmw:osType=\"other4xLinux64Guest\""));
    assert!(ovf.contains("<vssd:VirtualSystemType>vmx-17</vssd:VirtualSystemType>"));
    assert!(ovf.contains("vmw:key=\"firmware\" vmw:value=\"efi\""));
    assert!(ovf.contains("<rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>"));
    assert!(ovf.contains("My &lt;App&gt;"));
    assert!(pos("</Item>\n      <vmw:Config") > ovf.rfind("<Item").unwrap());
    let template_order = [3, 4, 6, 5, 5, 24, 1, 15, 17, 10];
    let env = vmdk::ova::ovf::parse(ovf.as_bytes(), Path::new("app.ovf")).unwrap();
    let sys = env.system.as_ref().unwrap();
    let ours: Vec<u32> = sys
        .items
        .iter()
        .map(|i| i.resource_type().unwrap())
        .collect();
    assert_eq!(ours, [3, 4, 6, 24, 1, 17, 17, 10]);
    let mut t = template_order.iter();
    for r in &ours {
        // A subsequence of the template's order (disks repeat in place).
        let r = *r;
        if r != 17 || !ours.windows(2).any(|w| w == [17, 17]) {
            assert!(
                t.any(|x| *x == r),
                "item type {r} out of the template's order"
            );
        }
    }
    for children in item_children(&ovf) {
        let mut sorted = children.clone();
        sorted.sort();
        assert_eq!(
            children, sorted,
            "rasd children not in the template's order"
        );
    }
    for (d, f) in env.disk_files() {
        let f = f.unwrap();
        let len = std::fs::metadata(x.join(&f.href)).unwrap().len();
        assert_eq!(f.size, Some(len));
        assert_eq!(d.capacity, Some(6 << 20));
        assert!(d.populated_size.unwrap() > 0);
        assert_eq!(
            d.format.as_deref(),
            Some("http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized")
        );
    }

    // Our own reader agrees: ova info, and the disks read in place.
    let info = vmdk(&["ova", "info", "--output=json", &s(&ova)]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    let j = info.json();
    assert_eq!(j["virtual-system"]["cpus"], 4);
    assert_eq!(j["virtual-system"]["memory-mib"], 2048);
    assert_eq!(j["virtual-system"]["firmware"], "efi");
    assert_eq!(j["disks"][0]["controller"], "SCSI (VirtualSCSI)");
    assert!(j["digests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["status"] == "ok"));
    vmdk_ok(&["compare", &s(&raw), &s(&ova)]);
    let second = format!("{}/app-disk2.vmdk", s(&ova));
    vmdk_ok(&["compare", &s(&sparse), &second]);

    // Writing over the archive a member is read from is refused even without locks (-U),
    // whichever member it is.
    let before = std::fs::read(&ova).unwrap();
    let r = vmdk(&["convert", "-U", "-O", "raw", &second, &s(&ova)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("refusing to overwrite"), "{}", r.stderr);
    assert!(std::fs::read(&ova).unwrap() == before, "the OVA changed");
}

#[test]
fn from_ovf_keeps_the_users_descriptor() {
    let dir = tempdir();
    let d = dir.path();
    let raw = raw_disk(d);
    let template = d.join("mine.ovf");
    std::fs::write(
        &template,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- my appliance -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="root.vmdk" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
  </DiskSection>
  <VirtualSystem ovf:id="mine"><Info>x</Info><Name>mine</Name></VirtualSystem>
</Envelope>
"#,
    )
    .unwrap();
    let ova = d.join("out.ova");
    vmdk_ok(&[
        "ova",
        "create",
        "-o",
        &s(&ova),
        "--from-ovf",
        &s(&template),
        &s(&raw),
    ]);
    let list = tool("tar", &["-tf", &s(&ova)]).expect(0, "tar -t");
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        ["out.ovf", "out.mf", "root.vmdk"]
    );
    let x = d.join("x");
    std::fs::create_dir(&x).unwrap();
    tool("tar", &["-xf", &s(&ova), "-C", &s(&x)]).expect(0, "tar -x");
    tool("xmllint", &["--noout", &s(&x.join("out.ovf"))]).expect(0, "xmllint");
    let ovf = std::fs::read_to_string(x.join("out.ovf")).unwrap();
    assert!(ovf.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- my appliance -->"));
    let size = std::fs::metadata(x.join("root.vmdk")).unwrap().len();
    assert!(ovf.contains(&format!("ovf:size=\"{size}\"")), "{ovf}");
    assert!(
        ovf.contains(&format!("ovf:capacity=\"{}\"", 6 << 20)),
        "{ovf}"
    );
    assert!(
        ovf.contains("ovf:capacityAllocationUnits=\"byte\""),
        "{ovf}"
    );
    assert!(ovf.contains("ovf:populatedSize="), "{ovf}");
    let mf = std::fs::read_to_string(x.join("out.mf")).unwrap();
    for line in mf.lines() {
        let (alg_file, hex) = line.split_once(")= ").unwrap();
        let file = alg_file.strip_prefix("SHA256(").unwrap();
        assert_eq!(digest("sha256sum", &x.join(file)), hex, "{file}");
    }
    qemu_img(&["check", &s(&x.join("root.vmdk"))]);
    qemu_img(&["compare", &s(&raw), &s(&x.join("root.vmdk"))]);

    // A template with another number of disks is refused before anything is written.
    let e = vmdk(&[
        "ova",
        "create",
        "-o",
        &s(&d.join("two.ova")),
        "--from-ovf",
        &s(&template),
        &s(&raw),
        &s(&raw),
    ]);
    assert_eq!(e.code, 1);
    assert!(
        e.stderr.contains("1 disks") && e.stderr.contains("2 were given"),
        "{}",
        e.stderr
    );
    assert!(!d.join("two.ova").exists());
}

const VBOX_OVF: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="2.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine" xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData">
  <References>
    <File ovf:id="file1" ovf:href="DISK"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="CAP" ovf:capacityAllocationUnits="UNITS" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="c7a1d3b5-0000-4000-8000-000000000001"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="ubuntu">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="94">
      <Info>The kind of installed guest operating system</Info>
      <Description>Ubuntu_64</Description>
      <vbox:OSType ovf:required="false">Ubuntu_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>ubuntu</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>1 virtual CPU</rasd:Caption>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <EthernetPortItem>
        <epasd:Connection>NAT</epasd:Connection>
        <epasd:InstanceID>8</epasd:InstanceID>
        <epasd:ResourceType>10</epasd:ResourceType>
      </EthernetPortItem>
      <StorageItem>
        <sasd:AddressOnParent>0</sasd:AddressOnParent>
        <sasd:HostResource>/disk/vmdisk1</sasd:HostResource>
        <sasd:InstanceID>9</sasd:InstanceID>
        <sasd:Parent>5</sasd:Parent>
        <sasd:ResourceType>17</sasd:ResourceType>
      </StorageItem>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{c7a1d3b5-0000-4000-8000-000000000002}" name="ubuntu"><ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info></vbox:Machine>
  </VirtualSystem>
</Envelope>
"#;

const VMWARE_OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-8169922" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="DISK" ovf:id="file1" ovf:size="SIZE"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="CAP" ovf:capacityAllocationUnits="UNITS" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="0"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <Name>vm</Name>
    <OperatingSystemSection ovf:id="100" vmw:osType="other26xLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>vm</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-07 vmx-10</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

struct Built {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ova: PathBuf,
    disk: String,
}

/// An OVA around the sample `sample` named `disk` inside, VirtualBox style (`.ovf`,
/// disk, `.mf` with SHA1 last) or VMware style (`.ovf`, `.mf` with SHA256, disk, `.cert`).
fn build(sample: &str, disk: &str, cap: &str, units: &str, vmware: bool) -> Built {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let src = samples().join(sample);
    std::fs::copy(&src, dir.join(disk)).unwrap();
    let size = std::fs::metadata(&src).unwrap().len().to_string();
    let template = if vmware { VMWARE_OVF } else { VBOX_OVF };
    let ovf = template
        .replace("DISK", disk)
        .replace("SIZE", &size)
        .replace("CAP", cap)
        .replace("UNITS", units);
    std::fs::write(dir.join("app.ovf"), ovf).unwrap();
    let (alg, tool_name) = if vmware {
        ("SHA256", "sha256sum")
    } else {
        ("SHA1", "sha1sum")
    };
    let mf = format!(
        "{alg}(app.ovf)= {}\n{alg}({disk})= {}\n",
        digest(tool_name, &dir.join("app.ovf")),
        digest(tool_name, &dir.join(disk))
    );
    std::fs::write(dir.join("app.mf"), mf).unwrap();
    let ova = dir.join("app.ova");
    if vmware {
        std::fs::write(dir.join("app.cert"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        tar_create(&ova, &dir, &["app.ovf", "app.mf", disk, "app.cert"]);
    } else {
        tar_create(&ova, &dir, &["app.ovf", disk, "app.mf"]);
    }
    Built {
        _dir: tmp,
        dir,
        ova,
        disk: disk.to_string(),
    }
}

/// Every command reads the OVA's disk exactly as the extracted file.
fn reads_like_the_extracted_disk(b: &Built, expect_sha: Option<&str>) {
    let ova = s(&b.ova);
    let member = format!("{ova}/{}", b.disk);
    let extracted = s(&b.dir.join(&b.disk));
    for name in [&ova, &member] {
        vmdk_ok(&["check", name]);
        vmdk_ok(&["compare", name, &extracted]);
        let ours = vmdk(&["info", "--output=json", name]).json();
        let theirs = vmdk(&["info", "--output=json", &extracted]).json();
        assert_eq!(ours["virtual-size"], theirs["virtual-size"]);
        assert_eq!(ours["format"], theirs["format"]);
        let m1 = vmdk(&["map", "--output=json", name]).json();
        let m2 = vmdk(&["map", "--output=json", &extracted]).json();
        let strip = |v: &serde_json::Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["start"].clone(),
                        e["length"].clone(),
                        e["data"].clone(),
                        e["zero"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&m1), strip(&m2), "map of {name}");
    }
    let out_ova = b.dir.join("from-ova.raw");
    let out_member = b.dir.join("from-member.raw");
    let out_file = b.dir.join("from-file.raw");
    vmdk_ok(&["convert", "-O", "raw", &ova, &s(&out_ova)]);
    vmdk_ok(&["convert", "-O", "raw", &member, &s(&out_member)]);
    vmdk_ok(&["convert", "-O", "raw", &extracted, &s(&out_file)]);
    let a = std::fs::read(&out_file).unwrap();
    assert!(std::fs::read(&out_ova).unwrap() == a, "OVA convert differs");
    assert!(
        std::fs::read(&out_member).unwrap() == a,
        "member convert differs"
    );
    if let Some(sha) = expect_sha {
        assert_eq!(digest("sha256sum", &out_ova), sha);
    }
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vmdk",
        &s(&out_ova),
        &extracted,
    ]);
}

#[test]
fn reads_a_vmware_style_ova_in_place() {
    // vmdk-rs/streamOptimized.vmdk: vmware-vdiskmanager, 10 MiB of real content.
    let b = build(
        "vmdk-rs/streamOptimized.vmdk",
        "vm-disk1.vmdk",
        "10",
        "byte * 2^20",
        true,
    );
    reads_like_the_extracted_disk(
        &b,
        Some("a3bcf05f07a1c06a3380eeca8571f0efb2b85afafa1e21662b8cad436d1f7727"),
    );
    let j = vmdk(&["ova", "info", "--output=json", &s(&b.ova)]);
    assert_eq!(j.code, 0, "{}", j.stderr);
    let j = j.json();
    assert_eq!(j["ovf-version"], "1.x");
    assert_eq!(j["certificate"], "app.cert");
    assert_eq!(j["virtual-system"]["os-type"], "other26xLinux64Guest");
    assert_eq!(j["virtual-system"]["hardware-family"], "vmx-07 vmx-10");
    assert_eq!(j["disks"][0]["capacity"], 10 << 20);
    assert_eq!(j["disks"][0]["controller"], "SCSI (lsilogic)");
    let d = j["digests"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert!(d
        .iter()
        .all(|d| d["status"] == "ok" && d["algorithm"] == "SHA256"));
    // A member changed after the manifest was written: the check says so (exit 2).
    let mf = b.dir.join("app.mf");
    let text = std::fs::read_to_string(&mf).unwrap();
    let last = text.lines().nth(1).unwrap();
    let bad = text.replace(last, &format!("{}0000", &last[..last.len() - 4]));
    std::fs::write(&mf, bad).unwrap();
    let ova2 = b.dir.join("tampered.ova");
    tar_create(&ova2, &b.dir, &["app.ovf", "app.mf", &b.disk]);
    let r = vmdk(&["ova", "info", &s(&ova2)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("MISMATCH"), "{}", r.stdout);
}

#[test]
fn reads_virtualbox_style_ovas_in_place() {
    // VirtualBox's own OVF 2.0 export disk (8 GiB, all zero), capacity in GiB units, the
    // manifest after the disk with SHA-1 digests.
    let b = build(
        "cot/ubuntu.2.0-disk1.vmdk",
        "ubuntu-disk1.vmdk",
        "8",
        "byte * 2^30",
        false,
    );
    let ova = s(&b.ova);
    vmdk_ok(&["check", &ova]);
    vmdk_ok(&["compare", &ova, &s(&b.dir.join(&b.disk))]);
    let j = vmdk(&["ova", "info", "--output=json", &ova]);
    assert_eq!(j.code, 0, "{}", j.stderr);
    let j = j.json();
    assert_eq!(j["ovf-version"], "2.x");
    assert_eq!(j["virtual-system"]["os-type"], "Ubuntu_64");
    assert_eq!(j["virtual-system"]["cpus"], 1);
    assert_eq!(j["virtual-system"]["memory-mib"], 1024);
    assert_eq!(j["disks"][0]["capacity"], 8u64 << 30);
    assert_eq!(j["disks"][0]["controller"], "SATA (AHCI)");
    assert_eq!(j["networks"][0]["name"], "NAT");
    assert!(j["digests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["status"] == "ok" && d["algorithm"] == "SHA1"));

    // xo-vmdk-to-vhd: another VirtualBox OVA export disk (4 MiB), capacity in bytes.
    let b = build(
        "xo-vmdk-to-vhd/test.vmdk",
        "test-disk1.vmdk",
        "4194304",
        "byte",
        false,
    );
    reads_like_the_extracted_disk(
        &b,
        Some("bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"),
    );
}

#[test]
fn members_are_read_only_and_never_overwritten_by_their_own_readers() {
    let b = build(
        "xo-vmdk-to-vhd/test.vmdk",
        "test-disk1.vmdk",
        "4194304",
        "byte",
        false,
    );
    let ova = s(&b.ova);
    let before = std::fs::read(&b.ova).unwrap();
    let r = vmdk(&["io", "-c", "write 0 512", &format!("{ova}/test-disk1.vmdk")]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("read-only"), "{}", r.stderr);
    // Converting the OVA's disk onto the OVA itself is refused before anything is
    // truncated.
    let r = vmdk(&["convert", "-O", "raw", &ova, &ova]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let r = vmdk(&[
        "ova",
        "create",
        "-o",
        &ova,
        &format!("{ova}/test-disk1.vmdk"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(std::fs::read(&b.ova).unwrap() == before, "the OVA changed");
    let r = vmdk(&["info", &format!("{ova}/missing.vmdk")]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no member of that name"), "{}", r.stderr);
}

/// A GNU tar header for `name` of `size` bytes, type `kind`, with a correct checksum.
fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend(header(name, data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_archives_are_refused_cleanly() {
    let dir = tempdir();
    let d = dir.path();
    let disk = std::fs::read(samples().join("xo-vmdk-to-vhd/test.vmdk")).unwrap();
    let ovf_for = |href: &str, extra: &str| {
        format!(
            r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="{href}" ovf:id="f1" {extra}/></References><DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="4194304"/></DiskSection></Envelope>"#
        )
    };
    let good_ovf = ovf_for("disk.vmdk", "");
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><Name>&lol9;</Name></Envelope>"#;
    let xxe = r#"<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="&x;" ovf:id="f1"/></References></Envelope>"#;

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", archive(&[("../x.vmdk", &disk)]), "climbs out"),
        ("absolute", archive(&[("/x.vmdk", &disk)]), "absolute name"),
        (
            "laughs",
            archive(&[("a.ovf", laughs.as_bytes()), ("disk.vmdk", &disk)]),
            "DTD",
        ),
        (
            "xxe",
            archive(&[("a.ovf", xxe.as_bytes()), ("disk.vmdk", &disk)]),
            "DTD",
        ),
        (
            "chunked",
            archive(&[
                (
                    "a.ovf",
                    ovf_for("disk.vmdk", r#"ovf:chunkSize="65536""#).as_bytes(),
                ),
                ("disk.vmdk.000000000", &disk[..65536]),
                ("disk.vmdk.000000001", &disk[65536..]),
            ]),
            "split over several",
        ),
        (
            "notxml",
            archive(&[("a.ovf", b"<Envelope"), ("disk.vmdk", &disk)]),
            "not well-formed",
        ),
    ];
    let mut past = archive(&[("a.ovf", good_ovf.as_bytes()), ("disk.vmdk", &disk)]);
    past.truncate(past.len() - 1024 - 4096);
    cases.push(("past-end", past, "past the end"));
    let mut bad = archive(&[("a.ovf", good_ovf.as_bytes()), ("disk.vmdk", &disk)]);
    let second = 512 + good_ovf.len().next_multiple_of(512);
    bad[second + 3] ^= 0x20;
    cases.push(("checksum", bad, "bad checksum"));
    let good = archive(&[("a.ovf", good_ovf.as_bytes()), ("disk.vmdk", &disk)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &good).unwrap();
    let gz = gz.finish().unwrap();
    cases.push(("gzip", gz.clone(), "gzip"));

    for (name, bytes, msg) in &cases {
        let p = d.join(format!("{name}.ova"));
        std::fs::write(&p, bytes).unwrap();
        for args in [
            vec!["info".to_string(), s(&p)],
            vec![
                "convert".into(),
                "-O".into(),
                "raw".into(),
                s(&p),
                s(&d.join("o.raw")),
            ],
        ] {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = vmdk(&a);
            assert_eq!(r.code, 1, "{name} {a:?}: {}{}", r.stdout, r.stderr);
            assert!(r.stderr.contains(msg), "{name} {a:?}: {}", r.stderr);
            assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
            assert!(
                r.stderr.contains(&format!("{name}.ova")),
                "{name}: {}",
                r.stderr
            );
        }
    }
    // `.ova.gz` names are claimed too, to say what they are.
    let p = d.join("x.ova.gz");
    std::fs::write(&p, &gz).unwrap();
    let r = vmdk(&["info", &s(&p)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("gzip"), "{}", r.stderr);
    // The well-formed archive reads.
    let p = d.join("good.ova");
    std::fs::write(&p, &good).unwrap();
    vmdk_ok(&["check", &s(&p)]);
    let r = vmdk(&["ova", "info", &s(&d.join("laughs.ova"))]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("DTD"), "{}", r.stderr);
}
