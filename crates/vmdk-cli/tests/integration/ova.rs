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
use vmdk_test_support::qemu::qemu_to_vmdk;

use crate::common::*;

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
    qemu_to_vmdk(&raw, &sparse, "raw", "");
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
    assert_contains!(r.stderr, "refusing to overwrite");
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

/// With --from-ovf the virtual machine is the OVF's: each flag that describes it (name, OS,
/// CPUs, memory, hardware, firmware, network, controller) is refused by name before
/// anything is written, and each is shown to work without a template. The flags about the
/// disks and the run (-f, --compression-level, -m, -p) apply to a template's disks.
#[test]
fn from_ovf_refuses_the_machine_flags_and_honours_the_rest() {
    let dir = tempdir();
    let d = dir.path();
    let raw = raw_disk(d);
    let template = d.join("mine.ovf");
    std::fs::write(
        &template,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="root.vmdk" ovf:id="file1"/></References>
  <DiskSection><Info>Virtual disk information</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
  </DiskSection>
  <VirtualSystem ovf:id="mine"><Info>x</Info><Name>mine</Name></VirtualSystem>
</Envelope>
"#,
    )
    .unwrap();
    let info = |ova: &Path| vmdk(&["ova", "info", "--output=json", &s(ova)]).json();
    // (flag, value, where `ova info` shows it without a template, what it shows)
    let flags: [(&str, &str, &str, &str); 9] = [
        ("--name", "web", "/virtual-system/name", "web"),
        (
            "--os-type",
            "ubuntu64Guest",
            "/virtual-system/os-type",
            "ubuntu64Guest",
        ),
        ("--os-cim", "94", "/virtual-system/os-cim-id", "94"),
        ("--cpus", "4", "/virtual-system/cpus", "4"),
        ("--memory", "4096", "/virtual-system/memory-mib", "4096"),
        (
            "--hw",
            "vmx-19",
            "/virtual-system/hardware-family",
            "vmx-19",
        ),
        ("--firmware", "efi", "/virtual-system/firmware", "efi"),
        ("--network", "Lab Net", "/networks/0/name", "Lab Net"),
        (
            "--controller",
            "pvscsi",
            "/disks/0/controller",
            "VirtualSCSI",
        ),
    ];
    for (flag, value, pointer, shown) in flags {
        let ova = d.join("refused.ova");
        let r = vmdk(&[
            "ova",
            "create",
            "-o",
            &s(&ova),
            "--from-ovf",
            &s(&template),
            flag,
            value,
            &s(&raw),
        ]);
        assert_eq!(r.code, 1, "{flag}: {}", r.stderr);
        assert_eq!(
            r.stderr.trim_end(),
            format!(
                "vmdk: {flag} cannot be used with --from-ovf: the virtual machine is the one \
                 '{}' describes (edit it there)",
                s(&template)
            ),
            "{flag}"
        );
        assert!(!ova.exists(), "{flag}: an output was written");
        let ova = d.join("composed.ova");
        vmdk_ok(&["ova", "create", "-o", &s(&ova), flag, value, &s(&raw)]);
        let v = info(&ova);
        let got = &v.pointer(pointer).unwrap_or_else(|| panic!("{flag}: {v}"));
        let got = got.as_str().map_or_else(|| got.to_string(), str::to_string);
        assert!(got.contains(shown), "{flag}: {pointer} is {got}");
        std::fs::remove_file(&ova).unwrap();
    }
    // Several at once: each named.
    let r = vmdk(&[
        "ova",
        "create",
        "-o",
        &s(&d.join("x.ova")),
        "--from-ovf",
        &s(&template),
        "--cpus",
        "8",
        "--name",
        "n",
        &s(&raw),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("--name, --cpus cannot be used with --from-ovf"),
        "{}",
        r.stderr
    );

    // The disk flags apply to the template's disks. -f raw: a VMDK file's own bytes are
    // the disk.
    let vmdk_file = qemu_create(d, "small.vmdk", "1M", &[]);
    let with = |extra: &[&str], ova: &Path| {
        let mut args = vec!["ova", "create", "-o"];
        let o = s(ova);
        let t = s(&template);
        args.push(&o);
        args.extend(["--from-ovf", &t]);
        args.extend(extra);
        let r = vmdk(&args);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
        r
    };
    let as_raw = d.join("as-raw.ova");
    with(&["-f", "raw", &s(&vmdk_file)], &as_raw);
    let member = format!("{}/root.vmdk", s(&as_raw));
    vmdk_ok(&["compare", "-F", "raw", &member, &s(&vmdk_file)]);
    let probed = d.join("probed.ova");
    with(&[&s(&vmdk_file)], &probed);
    let r = vmdk(&[
        "compare",
        "-F",
        "raw",
        &format!("{}/root.vmdk", s(&probed)),
        &s(&vmdk_file),
    ]);
    assert_eq!(
        r.code, 1,
        "without -f the VMDK is read as VMDK: {}",
        r.stdout
    );
    // --compression-level: level 0 stores the grains, 9 deflates them.
    let stored = d.join("stored.ova");
    let deflated = d.join("deflated.ova");
    with(&["--compression-level", "0", &s(&raw)], &stored);
    with(&["--compression-level", "9", &s(&raw)], &deflated);
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        len(&stored) > len(&deflated) + (512 << 10),
        "{} {}",
        len(&stored),
        len(&deflated)
    );
    for ova in [&stored, &deflated] {
        vmdk_ok(&["compare", &format!("{}/root.vmdk", s(ova)), &s(&raw)]);
    }
    // -m and -p: one worker, progress records on stderr.
    let r = with(&["-m", "1", "-p", &s(&raw)], &d.join("progress.ova"));
    assert_contains!(r.stderr, "(100.00/100%)");
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
    assert_contains!(r.stdout, "MISMATCH");
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
    assert_contains!(r.stderr, "read-only");
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
    assert_contains!(r.stderr, "no member of that name");
}

/// A GNU tar header for `name` of `size` bytes, type `kind`, with a correct checksum.
fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
    tar_block(name.as_bytes(), size, kind, b"", b"ustar  \0")
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
            assert_contains!(r.stderr, msg, "{name} {a:?}");
            assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
            assert_contains!(r.stderr, &format!("{name}.ova"), "{name}");
        }
    }
    // `.ova.gz` names are claimed too, to say what they are.
    let p = d.join("x.ova.gz");
    std::fs::write(&p, &gz).unwrap();
    let r = vmdk(&["info", &s(&p)]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stderr, "gzip");
    // The well-formed archive reads.
    let p = d.join("good.ova");
    std::fs::write(&p, &good).unwrap();
    vmdk_ok(&["check", &s(&p)]);
    let r = vmdk(&["ova", "info", &s(&d.join("laughs.ova"))]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stderr, "DTD");
}

/// Hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A member: header of type `kind`, then `data` padded to a block.
fn member(name: &str, data: &[u8], kind: u8) -> Vec<u8> {
    let mut out = header(name, data.len() as u64, kind);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A pax extended header (`x`, Solaris `X` or global `g`) holding `records`.
fn pax(kind: u8, records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
        // The length counts its own digits.
        let mut n = rest.len() + 1;
        while n.to_string().len() + rest.len() != n {
            n += 1;
        }
        body.extend_from_slice(n.to_string().as_bytes());
        body.extend_from_slice(&rest);
    }
    member("PaxHeaders/x", &body, kind)
}

/// Every regular file under `dir`, by path relative to it, with its bytes.
fn regular_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let t = std::fs::symlink_metadata(&p).unwrap().file_type();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// What GNU tar extracts from `archive`: its regular files.
fn tar_extracts(archive: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let x = tempdir();
    // Exit status ignored: tar extracts what it can from a damaged archive too.
    tool("tar", &["-xf", &s(archive), "-C", &s(x.path())]);
    regular_files(x.path())
}

#[test]
fn member_names_and_bytes_are_the_ones_gnu_tar_extracts() {
    let dir = tempdir();
    let d = dir.path();
    let data = |c: u8| vec![c; 700];
    let long = member("././@LongLink", b"long-L.vmdk\0", b'L');
    let hidden = member("hidden.vmdk", &data(9), b'0');
    let with_hidden = |kind: u8, name: &str| {
        let mut h = header(name, hidden.len() as u64, kind);
        h[157..163].copy_from_slice(b"target");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        [h, hidden.clone()].concat()
    };
    // (case, archive without its end blocks, refused?)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // A pax path wins over a GNU long name, in either order.
        (
            "pax-after-long",
            [
                long.clone(),
                pax(b'x', &[("path", b"pax.vmdk")]),
                member("hdr.vmdk", &data(1), b'0'),
            ]
            .concat(),
            false,
        ),
        (
            "pax-before-long",
            [
                pax(b'x', &[("path", b"pax.vmdk")]),
                long.clone(),
                member("hdr.vmdk", &data(2), b'0'),
            ]
            .concat(),
            false,
        ),
        // Solaris `X` headers are pax headers.
        (
            "solaris-x",
            [
                pax(b'X', &[("path", b"renamed.vmdk")]),
                member("orig.vmdk", &data(3), b'0'),
            ]
            .concat(),
            false,
        ),
        // A pax value ends at its NUL.
        (
            "pax-nul",
            [
                pax(b'x', &[("path", b"good.vmdk\0evil")]),
                member("hdr.vmdk", &data(4), b'0'),
            ]
            .concat(),
            false,
        ),
        // `//`, `/./` and `./` are folded.
        (
            "folded",
            [
                member("a//b.vmdk", &data(5), b'0'),
                member("a/./c.vmdk", &data(6), b'0'),
                member("./d.vmdk", &data(7), b'0'),
            ]
            .concat(),
            false,
        ),
        // One file twice: tar keeps the last.
        (
            "duplicate",
            [
                member("e.vmdk", &data(8), b'0'),
                member("./e.vmdk", &data(10), b'0'),
            ]
            .concat(),
            false,
        ),
        // tar -x reads no data after a directory's or a link's header: the member
        // hidden in their "data" is extracted (tar -t skips it for links).
        ("dir-with-data", with_hidden(b'5', "d/"), true),
        ("symlink-with-data", with_hidden(b'2', "s"), true),
        ("hardlink-with-data", with_hidden(b'1', "l"), true),
        (
            "regular-slash-with-data",
            member("f.vmdk/", &data(11), b'0'),
            true,
        ),
        // A global pax path renames every member after it.
        (
            "global-path",
            [
                pax(b'g', &[("path", b"glob.vmdk")]),
                member("one.vmdk", &data(12), b'0'),
                member("two.vmdk", &data(13), b'0'),
            ]
            .concat(),
            true,
        ),
        // GNU sparse files are reassembled by tar from a map.
        (
            "pax-sparse",
            [
                pax(
                    b'x',
                    &[
                        ("GNU.sparse.major", b"1"),
                        ("GNU.sparse.name", b"real.vmdk"),
                    ],
                ),
                member("GNUSparseFile.1/real.vmdk", &data(14), b'0'),
            ]
            .concat(),
            true,
        ),
    ];
    for (case, body, refused) in cases {
        let bare = d.join(format!("{case}.tar"));
        std::fs::write(&bare, [body.clone(), vec![0; 1024]].concat()).unwrap();
        let theirs = tar_extracts(&bare);
        // The manifest gives the digests of what tar extracted: "ok" on every line means
        // we read the same bytes under the same names.
        let mf: String = theirs
            .iter()
            .map(|(n, b)| format!("SHA256({n})= {}\n", sha256_hex(b)))
            .collect();
        let ova = d.join(format!("{case}.ova"));
        let archive = [body, member("z.mf", mf.as_bytes(), b'0'), vec![0; 1024]].concat();
        std::fs::write(&ova, archive).unwrap();
        let r = vmdk(&["ova", "info", "--output=json", &s(&ova)]);
        if refused {
            assert_eq!(r.code, 1, "{case}: {}{}", r.stdout, r.stderr);
            assert_contains!(r.stderr, "refusing the archive", "{case}");
            let r = vmdk(&["info", &format!("{}/hidden.vmdk", s(&ova))]);
            assert_eq!(r.code, 1, "{case}: {}", r.stderr);
            continue;
        }
        assert!(matches!(r.code, 0 | 2), "{case}: {}", r.stderr);
        let j = r.json();
        let ours: std::collections::BTreeSet<String> = j["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "file" && m["name"] != "z.mf")
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        let tars: std::collections::BTreeSet<String> = theirs.keys().cloned().collect();
        assert_eq!(ours, tars, "{case}: member names");
        for c in j["digests"].as_array().unwrap() {
            assert_eq!(c["status"], "ok", "{case}: {c}");
        }
        let dup = j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "duplicate-member");
        assert_eq!(dup, case == "duplicate", "{case}: {}", j["findings"]);
        assert_eq!(r.code, if dup { 2 } else { 0 }, "{case}: {}", j["findings"]);
        // An error naming the members carries the names as tar has them (no NUL).
        let r = vmdk(&["info", &format!("{}/missing.vmdk", s(&ova))]);
        assert_eq!(r.code, 1, "{case}");
        assert!(!r.stderr.contains('\0'), "{case}: {:?}", r.stderr);
    }

    // A regular file whose name ends in `/` is a directory to tar: named by the OVF as the
    // disk, it is refused with a message (it used to panic).
    let ovf = r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="disk.vmdk" ovf:id="f1"/></References></Envelope>"#;
    let ova = d.join("slash.ova");
    std::fs::write(
        &ova,
        [
            member("a.ovf", ovf.as_bytes(), b'0'),
            member("disk.vmdk/", b"", b'0'),
            vec![0; 1024],
        ]
        .concat(),
    )
    .unwrap();
    let r = vmdk(&["info", &s(&ova)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_contains!(r.stderr, "is a directory");
}

/// A small streamOptimized disk holding `fill` in its first 64 KiB.
fn small_disk(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let mut d = vec![0u8; 1 << 20];
    d[..65536].fill(fill);
    std::fs::write(&raw, d).unwrap();
    let out = dir.join(name);
    qemu_to_vmdk(&raw, &out, "raw", "subformat=streamOptimized");
    std::fs::remove_file(raw).unwrap();
    out
}

const ONE_DISK_OVF: &str = r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="disk.vmdk" ovf:id="f1"/></References><DiskSection><Info>d</Info><Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d1" ovf:fileRef="f1"/></DiskSection></Envelope>"#;

#[test]
fn duplicate_member_names_are_errors_and_never_read() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("a.ovf"), ONE_DISK_OVF).unwrap();
    for (case, second_name) in [("plain", "disk.vmdk"), ("dot-slash", "./disk.vmdk")] {
        let ova = d.join(format!("{case}.ova"));
        // The manifest vouches for the first disk.vmdk.
        let first = small_disk(d, "disk.vmdk", 0x11);
        let first_sha = digest("sha256sum", &first);
        std::fs::write(
            d.join("a.mf"),
            format!(
                "SHA256(a.ovf)= {}\nSHA256(disk.vmdk)= {first_sha}\n",
                digest("sha256sum", &d.join("a.ovf"))
            ),
        )
        .unwrap();
        tar_create(&ova, d, &["a.ovf", "a.mf", "disk.vmdk"]);
        // A second disk.vmdk appended (tar -r): what tar -x leaves on disk.
        let second = small_disk(d, "disk.vmdk", 0x22);
        let second_bytes = std::fs::read(&second).unwrap();
        tool("tar", &["-rf", &s(&ova), "-C", &s(d), second_name]).expect(0, "tar -r");
        let list = tool("tar", &["-tf", &s(&ova)]).expect(0, "tar -t");
        assert_eq!(list.lines().filter(|l| l.ends_with("disk.vmdk")).count(), 2);
        let extracted = tar_extracts(&ova);
        assert!(
            extracted["disk.vmdk"] == second_bytes,
            "{case}: tar keeps the last"
        );
        assert_ne!(sha256_hex(&extracted["disk.vmdk"]), first_sha);

        // ova info: an error naming the member; the digest checked is the extracted one's.
        let r = vmdk(&["ova", "info", &s(&ova)]);
        assert_eq!(r.code, 2, "{case}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout
                .contains("duplicate-member: \"disk.vmdk\" names 2 members"),
            "{case}: {}",
            r.stdout
        );
        assert_contains!(r.stdout, "SHA256(disk.vmdk): MISMATCH", "{case}");
        // Reading a disk out of it is refused, by the archive's name and the member's.
        for name in [s(&ova), format!("{}/disk.vmdk", s(&ova))] {
            let r = vmdk(&["info", &name]);
            assert_eq!(r.code, 1, "{case} {name}: {}", r.stdout);
            assert_contains!(r.stderr, "2 members named \"disk.vmdk\"", "{case}");
        }
    }
}

#[test]
fn members_and_disks_the_manifest_omits_are_errors() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("a.ovf"), ONE_DISK_OVF).unwrap();
    small_disk(d, "disk.vmdk", 0x33);
    std::fs::write(d.join("notes.txt"), "not in the manifest\n").unwrap();
    // The manifest vouches for the OVF only: neither the disk the OVF references nor the
    // extra member is covered.
    std::fs::write(
        d.join("a.mf"),
        format!("SHA256(a.ovf)= {}\n", digest("sha256sum", &d.join("a.ovf"))),
    )
    .unwrap();
    let ova = d.join("partial.ova");
    tar_create(&ova, d, &["a.ovf", "a.mf", "disk.vmdk", "notes.txt"]);
    let r = vmdk(&["ova", "info", &s(&ova)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    for want in [
        "unlisted-reference: the OVF references \"disk.vmdk\"",
        "unlisted-member: \"disk.vmdk\" is not listed in the manifest \"a.mf\"",
        "unlisted-member: \"notes.txt\" is not listed",
    ] {
        assert_contains!(r.stdout, want, "{want}:\n");
    }
    let j = vmdk(&["ova", "info", "--output=json", &s(&ova)]).json();
    let codes: Vec<&str> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["unlisted-reference", "unlisted-member", "unlisted-member"]
    );
    // A manifest line for a member the archive lacks.
    std::fs::write(
        d.join("a.mf"),
        format!(
            "SHA256(a.ovf)= {}\nSHA256(disk.vmdk)= {}\nSHA256(gone.vmdk)= 00\n",
            digest("sha256sum", &d.join("a.ovf")),
            digest("sha256sum", &d.join("disk.vmdk"))
        ),
    )
    .unwrap();
    let ova = d.join("gone.ova");
    tar_create(&ova, d, &["a.ovf", "a.mf", "disk.vmdk"]);
    let r = vmdk(&["ova", "info", &s(&ova)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert_contains!(
        r.stdout,
        "missing-member: the manifest lists \"gone.vmdk\", which is not in the archive"
    );
    // The complete manifest: clean, exit 0.
    std::fs::write(
        d.join("a.mf"),
        format!(
            "SHA256(a.ovf)= {}\nSHA256(disk.vmdk)= {}\n",
            digest("sha256sum", &d.join("a.ovf")),
            digest("sha256sum", &d.join("disk.vmdk"))
        ),
    )
    .unwrap();
    let ova = d.join("clean.ova");
    tar_create(&ova, d, &["a.ovf", "a.mf", "disk.vmdk"]);
    let r = vmdk(&["ova", "info", &s(&ova)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("problems:"), "{}", r.stdout);
}

/// Whether `text` holds anything a terminal acts on or hides: C0 controls other than
/// newline, DEL, C1 controls, bidirectional overrides and zero-width marks.
fn has_raw_controls(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn names_from_files_are_escaped_in_every_command() {
    let dir = tempdir();
    let d = dir.path();

    // An OVA whose member, manifest and OVF names carry terminal escapes, a C1 CSI, a
    // right-to-left override and a newline that would forge a line of the report.
    let evil_member = "notes\u{1b}]0;pwned\u{7}.txt";
    std::fs::write(d.join(evil_member), "x").unwrap();
    let ovf = ONE_DISK_OVF.replace("disk.vmdk", "disk\u{202e}kdmv.vmdk\u{9b}2J");
    std::fs::write(d.join("a.ovf"), &ovf).unwrap();
    small_disk(d, "disk.vmdk", 0x44);
    std::fs::write(
        d.join("a.mf"),
        "SHA256(\u{1b}[2J\u{1b}]0;pwned\u{7}disk.vmdk)= 00\nSHA256(a\u{7f}b\u{9b}31m)= 00\n\
         SHA256(x\rSHA256(disk.vmdk): ok)= 00\n",
    )
    .unwrap();
    let ova = d.join("names.ova");
    tar_create(&ova, d, &["a.ovf", "a.mf", "disk.vmdk", evil_member]);
    let r = vmdk(&["ova", "info", &s(&ova)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout);
    assert_contains!(r.stdout, "\\x1b[2J\\x1b]0;pwned\\x07disk.vmdk");
    assert_contains!(r.stdout, "notes\\x1b]0;pwned\\x07.txt");
    assert!(
        r.stdout
            .contains("disk\\xe2\\x80\\xaekdmv.vmdk\\xc2\\x9b2J"),
        "{}",
        r.stdout
    );
    assert_contains!(r.stdout, "x\\x0dSHA256(disk.vmdk): ok");
    // JSON: escaped as \uXXXX, so safe to show and parsed back to the true names.
    let r = vmdk(&["ova", "info", "--output=json", &s(&ova)]);
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout);
    let j = r.json();
    assert_eq!(j["disks"][0]["file"], "disk\u{202e}kdmv.vmdk\u{9b}2J");
    assert_eq!(j["digests"][1]["file"], "a\u{7f}b\u{9b}31m");

    // A descriptor whose extent file is named with escapes: info, map and check print it
    // escaped, and the error for a missing one is escaped too.
    let flat = "fl\u{1b}[31mat\u{9b}.bin";
    std::fs::write(d.join(flat), vec![0x5au8; 1 << 20]).unwrap();
    let desc = |extent: &str| {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"{extent}\" 0\n\n\
             # The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n"
        )
    };
    let good = d.join("good.vmdk");
    std::fs::write(&good, desc(flat)).unwrap();
    for args in [
        vec!["info"],
        vec!["info", "--output=json"],
        vec!["map"],
        vec!["check"],
    ] {
        let mut a = args.clone();
        let g = s(&good);
        a.push(&g);
        let r = vmdk(&a);
        assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
        assert!(!has_raw_controls(&r.stdout), "{a:?}: {:?}", r.stdout);
        assert!(!has_raw_controls(&r.stderr), "{a:?}: {:?}", r.stderr);
    }
    let info = vmdk_ok(&["info", &s(&good)]);
    assert!(info.contains("fl\\x1b[31mat\\xc2\\x9b.bin"), "{info}");
    let map = vmdk_ok(&["map", &s(&good)]);
    assert!(map.contains("fl\\x1b[31mat\\xc2\\x9b.bin"), "{map}");
    let missing = d.join("missing.vmdk");
    std::fs::write(&missing, desc("gone\u{1b}]0;pwned\u{7}.bin")).unwrap();
    for cmd in ["info", "check", "map"] {
        let r = vmdk(&[cmd, &s(&missing)]);
        assert_eq!(r.code, 1, "{cmd}: {}", r.stderr);
        assert!(!has_raw_controls(&r.stderr), "{cmd}: {:?}", r.stderr);
        assert_contains!(r.stderr, "gone\\x1b]0;pwned\\x07.bin", "{cmd}");
    }
}

#[test]
fn a_dotdot_member_is_refused_without_a_hint_that_cannot_help() {
    let dir = tempdir();
    let p = dir.path().join("dotdot.ova");
    std::fs::write(&p, archive(&[("../x.vmdk", b"x")])).unwrap();
    for args in [vec!["info"], vec!["ova", "info"]] {
        let mut a = args.clone();
        let ps = s(&p);
        a.push(&ps);
        let r = vmdk(&a);
        assert_eq!(r.code, 1, "{a:?}: {}", r.stderr);
        assert_contains!(r.stderr, "climbs out");
        // No option makes such an archive acceptable.
        assert!(!r.stderr.contains("--allow-path"), "{}", r.stderr);
    }
}

#[test]
fn an_ovf_of_many_disks_reports_in_time_proportional_to_its_size() {
    let dir = tempdir();
    let d = dir.path();
    // 30,000 disks, each with a file and a hardware item: before, every disk looked up
    // its file and its controller by scanning all of them (minutes).
    let n = 30_000;
    let mut ovf = String::from(
        r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"><References>"#,
    );
    for i in 0..n {
        ovf.push_str(&format!(r#"<File ovf:href="d{i}.vmdk" ovf:id="f{i}"/>"#));
    }
    ovf.push_str("</References><DiskSection><Info>d</Info>");
    for i in 0..n {
        ovf.push_str(&format!(
            r#"<Disk ovf:capacity="1" ovf:diskId="k{i}" ovf:fileRef="f{i}"/>"#
        ));
    }
    ovf.push_str(r#"</DiskSection><VirtualSystem ovf:id="vm"><Info>x</Info><VirtualHardwareSection><Info>x</Info><Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>6</rasd:ResourceType></Item>"#);
    for i in 0..n {
        ovf.push_str(&format!(
            "<Item><rasd:HostResource>ovf:/disk/k{i}</rasd:HostResource><rasd:InstanceID>{}</rasd:InstanceID><rasd:Parent>1</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>",
            i + 2
        ));
    }
    ovf.push_str("</VirtualHardwareSection></VirtualSystem></Envelope>");
    let ova = d.join("many.ova");
    let bytes = archive(&[("a.ovf", ovf.as_bytes())]);
    std::fs::write(&ova, &bytes).unwrap();
    for out in ["human", "json"] {
        let t = std::time::Instant::now();
        let r = vmdk(&["ova", "info", &format!("--output={out}"), &s(&ova)]);
        let took = t.elapsed();
        // Every disk's file is missing: findings, exit 2.
        assert_eq!(r.code, 2, "{}", r.stderr);
        let mb = bytes.len() as f64 / 1e6;
        eprintln!("{out}: {mb:.1} MB in {took:?}");
        assert!(
            took.as_secs_f64() < (mb * 0.5).max(2.0),
            "{out}: {took:?} for {mb:.1} MB"
        );
        if out == "json" {
            assert_eq!(r.json()["disks"][n - 1]["controller"], "SCSI");
        }
    }
}
