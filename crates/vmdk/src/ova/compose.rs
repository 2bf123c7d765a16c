//! Writing an OVF descriptor vSphere imports: the DSP0243 structure of VMware's own
//! templates (open-vmdk's `template-hw*.ovf`, which `ova-compose` reproduces): References,
//! DiskSection (capacity in bytes, populatedSize, the streamOptimized format URI),
//! NetworkSection, and a VirtualSystem with its OperatingSystemSection (`vmw:osType`) and
//! a VirtualHardwareSection of family `vmx-NN` holding, in this order, the CPU, memory,
//! disk controller, video card, VMCI device, hard disks and NIC items (each item's `rasd:`
//! children in alphabetical order, then its `vmw:Config`), followed by the `vmw:Config`
//! settings (firmware among them).

use std::fmt::Write;

use crate::error::{Error, Result};

/// The URI naming VMware's streamOptimized format in `ovf:format`.
pub const STREAM_FORMAT_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// Boot firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// Legacy BIOS.
    #[default]
    Bios,
    /// UEFI.
    Efi,
}

/// The controller the disks hang off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Controller {
    /// LSI Logic parallel SCSI.
    #[default]
    LsiLogic,
    /// VMware paravirtual SCSI (`VirtualSCSI`).
    Pvscsi,
    /// AHCI SATA.
    Sata,
}

impl Controller {
    /// `lsilogic`, `pvscsi` or `sata`.
    pub fn parse(s: &str) -> Result<Controller> {
        match s.to_ascii_lowercase().as_str() {
            "lsilogic" => Ok(Controller::LsiLogic),
            "pvscsi" | "virtualscsi" => Ok(Controller::Pvscsi),
            "sata" | "ahci" => Ok(Controller::Sata),
            _ => Err(Error::invalid(format!(
                "unknown controller '{s}' (expected lsilogic, pvscsi or sata)"
            ))),
        }
    }
}

/// What the appliance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceSpec {
    /// The virtual machine's name.
    pub name: String,
    /// VMware guest type (`vmw:osType`), e.g. `other4xLinux64Guest`, `ubuntu64Guest`.
    pub os_type: String,
    /// The CIM operating-system code (`OperatingSystemSection/@ovf:id`).
    pub os_cim: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Hardware family, `vmx-NN`.
    pub hardware: String,
    /// Boot firmware.
    pub firmware: Firmware,
    /// The network the NIC connects to; `None` for no NIC.
    pub network: Option<String>,
    /// Disk controller.
    pub controller: Controller,
}

impl Default for ApplianceSpec {
    /// ova-compose's defaults.
    fn default() -> Self {
        ApplianceSpec {
            name: "vm".into(),
            os_type: "other4xLinux64Guest".into(),
            os_cim: 100,
            cpus: 2,
            memory_mib: 1024,
            hardware: "vmx-14".into(),
            firmware: Firmware::Bios,
            network: Some("VM Network".into()),
            controller: Controller::LsiLogic,
        }
    }
}

impl ApplianceSpec {
    /// Refuse values vSphere would reject.
    pub fn validate(&self) -> Result<()> {
        let hw_ok = self
            .hardware
            .strip_prefix("vmx-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !hw_ok {
            return Err(Error::invalid(format!(
                "hardware family '{}' is not vmx-NN (vSphere refuses other families)",
                self.hardware
            )));
        }
        if self.cpus == 0 || self.memory_mib == 0 {
            return Err(Error::invalid("CPUs and memory must be at least 1"));
        }
        if self.name.is_empty() {
            return Err(Error::invalid("the appliance name is empty"));
        }
        Ok(())
    }
}

/// What the OVF says about one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// Member name (`ovf:href`).
    pub member: String,
    /// Size of the member in bytes (`ovf:size`).
    pub file_size: u64,
    /// Virtual size in bytes (`ovf:capacity`).
    pub capacity: u64,
    /// Bytes of the virtual disk that hold data (`ovf:populatedSize`).
    pub populated: u64,
}

/// `s` with XML's special characters escaped (text and attribute values).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// One hardware item: its `rasd:` children (sorted here by name, as VMware's templates and
/// ova-compose order them) and `vmw:Config` pairs.
struct Item<'a> {
    required: bool,
    rasd: Vec<(&'a str, String)>,
    config: Vec<(&'a str, &'a str)>,
}

impl Item<'_> {
    fn write(mut self, o: &mut String) {
        self.rasd.sort_by(|a, b| a.0.cmp(b.0));
        o.push_str(if self.required {
            "      <Item>\n"
        } else {
            "      <Item ovf:required=\"false\">\n"
        });
        for (k, v) in &self.rasd {
            let _ = writeln!(o, "        <rasd:{k}>{}</rasd:{k}>", escape(v));
        }
        for (k, v) in &self.config {
            let _ = writeln!(
                o,
                "        <vmw:Config ovf:required=\"false\" vmw:key=\"{k}\" vmw:value=\"{v}\"/>"
            );
        }
        o.push_str("      </Item>\n");
    }
}

/// The OVF descriptor for `spec` with `disks`.
pub fn render(spec: &ApplianceSpec, disks: &[DiskFacts]) -> String {
    let name = escape(&spec.name);
    let mut o = String::new();
    o.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        o,
        "<!-- Generated by vmdk {} -->",
        env!("CARGO_PKG_VERSION")
    );
    o.push_str(
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:cim=\"http://schemas.dmtf.org/wbem/wscim/1/common\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" \
         xmlns:vmw=\"http://www.vmware.com/schema/ovf\" \
         xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n",
    );
    o.push_str("  <References>\n");
    for (i, d) in disks.iter().enumerate() {
        let _ = writeln!(
            o,
            "    <File ovf:href=\"{}\" ovf:id=\"file{}\" ovf:size=\"{}\"/>",
            escape(&d.member),
            i + 1,
            d.file_size
        );
    }
    o.push_str("  </References>\n");
    o.push_str("  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    for (i, d) in disks.iter().enumerate() {
        let _ = writeln!(
            o,
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" \
             ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{STREAM_FORMAT_URI}\" \
             ovf:populatedSize=\"{}\"/>",
            d.capacity,
            d.populated,
            n = i + 1
        );
    }
    o.push_str("  </DiskSection>\n");
    o.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n");
    if let Some(net) = &spec.network {
        let net = escape(net);
        let _ = writeln!(
            o,
            "    <Network ovf:name=\"{net}\">\n      <Description>The {net} network</Description>\n    </Network>"
        );
    }
    o.push_str("  </NetworkSection>\n");
    let _ = writeln!(o, "  <VirtualSystem ovf:id=\"{name}\">");
    o.push_str("    <Info>A virtual machine</Info>\n");
    let _ = writeln!(o, "    <Name>{name}</Name>");
    let _ = writeln!(
        o,
        "    <OperatingSystemSection ovf:id=\"{}\" vmw:osType=\"{}\">\n      \
         <Info>The kind of installed guest operating system</Info>\n    </OperatingSystemSection>",
        spec.os_cim,
        escape(&spec.os_type)
    );
    o.push_str("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n");
    let _ = writeln!(
        o,
        "      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        \
         <vssd:InstanceID>0</vssd:InstanceID>\n        \
         <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>\n        \
         <vssd:VirtualSystemType>{}</vssd:VirtualSystemType>\n      </System>",
        escape(&spec.hardware)
    );
    let mut id = 0u32;
    let mut next = || {
        id += 1;
        id.to_string()
    };
    Item {
        required: true,
        rasd: vec![
            ("AllocationUnits", "hertz * 10^6".into()),
            ("Description", "Number of Virtual CPUs".into()),
            ("ElementName", format!("{} virtual CPU(s)", spec.cpus)),
            ("InstanceID", next()),
            ("ResourceType", "3".into()),
            ("VirtualQuantity", spec.cpus.to_string()),
        ],
        config: vec![],
    }
    .write(&mut o);
    Item {
        required: true,
        rasd: vec![
            ("AllocationUnits", "byte * 2^20".into()),
            ("Description", "Memory Size".into()),
            ("ElementName", format!("{}MB of memory", spec.memory_mib)),
            ("InstanceID", next()),
            ("ResourceType", "4".into()),
            ("VirtualQuantity", spec.memory_mib.to_string()),
        ],
        config: vec![],
    }
    .write(&mut o);
    let controller_id = next();
    let (desc, elem, subtype, rtype) = match spec.controller {
        Controller::LsiLogic => ("SCSI Controller", "SCSI Controller 0", "lsilogic", "6"),
        Controller::Pvscsi => ("SCSI Controller", "SCSI Controller 0", "VirtualSCSI", "6"),
        Controller::Sata => (
            "SATA Controller",
            "SATA Controller 0",
            "vmware.sata.ahci",
            "20",
        ),
    };
    Item {
        required: true,
        rasd: vec![
            ("Address", "0".into()),
            ("Description", desc.into()),
            ("ElementName", elem.into()),
            ("InstanceID", controller_id.clone()),
            ("ResourceSubType", subtype.into()),
            ("ResourceType", rtype.into()),
        ],
        config: vec![],
    }
    .write(&mut o);
    Item {
        required: false,
        rasd: vec![
            ("AutomaticAllocation", "false".into()),
            ("ElementName", "VirtualVideoCard".into()),
            ("InstanceID", next()),
            ("ResourceType", "24".into()),
        ],
        config: vec![
            ("useAutoDetect", "false"),
            ("videoRamSizeInKB", "4096"),
            ("enable3DSupport", "false"),
            ("use3dRenderer", "automatic"),
        ],
    }
    .write(&mut o);
    Item {
        required: false,
        rasd: vec![
            ("AutomaticAllocation", "false".into()),
            ("ElementName", "VirtualVMCIDevice".into()),
            ("InstanceID", next()),
            ("ResourceSubType", "vmware.vmci".into()),
            ("ResourceType", "1".into()),
        ],
        config: vec![("allowUnrestrictedCommunication", "false")],
    }
    .write(&mut o);
    for (i, _) in disks.iter().enumerate() {
        // SCSI unit 7 is the controller's own; disks take 0-6, 8-15.
        let unit = if spec.controller != Controller::Sata && i >= 7 {
            i + 1
        } else {
            i
        };
        Item {
            required: true,
            rasd: vec![
                ("AddressOnParent", unit.to_string()),
                ("ElementName", format!("Hard Disk {}", i + 1)),
                ("HostResource", format!("ovf:/disk/vmdisk{}", i + 1)),
                ("InstanceID", next()),
                ("Parent", controller_id.clone()),
                ("ResourceType", "17".into()),
            ],
            config: vec![("backing.writeThrough", "false")],
        }
        .write(&mut o);
    }
    if let Some(net) = &spec.network {
        Item {
            required: true,
            rasd: vec![
                ("AddressOnParent", "7".into()),
                ("AutomaticAllocation", "true".into()),
                ("Connection", net.clone()),
                (
                    "Description",
                    format!("VmxNet3 ethernet adapter on \"{net}\""),
                ),
                ("ElementName", "Ethernet 1".into()),
                ("InstanceID", next()),
                ("ResourceSubType", "VmxNet3".into()),
                ("ResourceType", "10".into()),
            ],
            config: vec![
                ("wakeOnLanEnabled", "true"),
                ("connectable.allowGuestControl", "true"),
            ],
        }
        .write(&mut o);
    }
    let firmware = match spec.firmware {
        Firmware::Bios => "bios",
        Firmware::Efi => "efi",
    };
    for (k, v) in [
        ("cpuHotAddEnabled", "false"),
        ("cpuHotRemoveEnabled", "false"),
        ("memoryHotAddEnabled", "false"),
        ("firmware", firmware),
        ("tools.syncTimeWithHost", "false"),
        ("tools.afterPowerOn", "true"),
        ("tools.afterResume", "true"),
        ("tools.beforeGuestShutdown", "true"),
        ("tools.beforeGuestStandby", "true"),
        ("tools.toolsUpgradePolicy", "manual"),
        ("powerOpInfo.powerOffType", "soft"),
        ("powerOpInfo.resetType", "soft"),
        ("powerOpInfo.suspendType", "hard"),
        ("nestedHVEnabled", "false"),
        ("virtualICH7MPresent", "false"),
        ("virtualSMCPresent", "false"),
        ("flags.vvtdEnabled", "false"),
        ("flags.vbsEnabled", "false"),
        ("bootOptions.efiSecureBootEnabled", "false"),
        ("powerOpInfo.standbyAction", "checkpoint"),
    ] {
        let _ = writeln!(
            o,
            "      <vmw:Config ovf:required=\"false\" vmw:key=\"{k}\" vmw:value=\"{v}\"/>"
        );
    }
    o.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_it_writes_reads_back() {
        let spec = ApplianceSpec {
            name: "a&b".into(),
            controller: Controller::Sata,
            firmware: Firmware::Efi,
            ..Default::default()
        };
        let disks = [DiskFacts {
            member: "a-disk1.vmdk".into(),
            file_size: 123,
            capacity: 1 << 30,
            populated: 65536,
        }];
        let text = render(&spec, &disks);
        let env = super::super::ovf::parse(text.as_bytes(), std::path::Path::new("a.ovf")).unwrap();
        assert_eq!(env.files[0].size, Some(123));
        assert_eq!(env.disks[0].capacity, Some(1 << 30));
        assert_eq!(env.disks[0].populated_size, Some(65536));
        let sys = env.system.as_ref().unwrap();
        assert_eq!(sys.name.as_deref(), Some("a&b"));
        assert_eq!(sys.hardware_family.as_deref(), Some("vmx-14"));
        assert_eq!(env.cpus(), Some(2));
        assert_eq!(env.memory_mib(), Some(1024));
        assert_eq!(
            env.controller_of(&env.disks[0]).as_deref(),
            Some("SATA (vmware.sata.ahci)")
        );
        assert!(sys
            .vmw_config
            .contains(&("firmware".to_string(), "efi".to_string())));
    }
}
