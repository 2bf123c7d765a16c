//! Reading an OVF descriptor (DSP0243): the files it references, its disks, networks and
//! the virtual system's hardware, tolerating what VMware, ovftool and VirtualBox write
//! (OVF 1.x and 2.x namespaces, `vmw:` and `vbox:` extensions, capacities in bytes or in
//! `byte * 2^N` units).
//!
//! The descriptor is hostile input. It is parsed with `roxmltree` with its default
//! options, which refuse any document carrying a DTD: entities are declared only in a DTD,
//! so there is nothing to expand (no billion laughs) and no external entity to fetch. Its
//! size and its number of nodes are bounded before and while parsing.

use std::collections::HashMap;
use std::path::Path;

use roxmltree::{Document, Node, ParsingOptions};

use crate::error::{Error, Result};

/// OVF 1.x envelope namespace.
pub(crate) const OVF_NS_1: &str = "http://schemas.dmtf.org/ovf/envelope/1";
/// OVF 2.x envelope namespace.
pub(crate) const OVF_NS_2: &str = "http://schemas.dmtf.org/ovf/envelope/2";
/// VMware's extension namespace.
pub(crate) const VMW_NS: &str = "http://www.vmware.com/schema/ovf";
/// Largest OVF descriptor read (real ones are tens of KiB).
pub(crate) const MAX_OVF_SIZE: u64 = 16 << 20;
/// Most XML nodes accepted in a descriptor.
const MAX_NODES: u32 = 1_000_000;

/// A file the OVF references (`References/File`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the member name in an OVA.
    pub href: String,
    /// `ovf:size`, when given as a number.
    pub size: Option<u64>,
    /// `ovf:chunkSize`: the file is split into members `href.000000000`, ...
    pub chunk_size: Option<u64>,
    /// `ovf:compression` (`gzip`): the member is compressed.
    pub compression: Option<String>,
}

/// A virtual disk (`DiskSection/Disk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef` (absent for an empty disk created at import).
    pub file_ref: Option<String>,
    /// Capacity in bytes, when `ovf:capacity` is a number in known units.
    pub capacity: Option<u64>,
    /// `ovf:capacity` as written.
    pub capacity_text: String,
    /// `ovf:capacityAllocationUnits` as written (`byte` when absent).
    pub capacity_units: String,
    /// `ovf:format` (a URI naming the disk format).
    pub format: Option<String>,
    /// `ovf:populatedSize` in bytes.
    pub populated_size: Option<u64>,
}

/// A logical network (`NetworkSection/Network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// `ovf:name`.
    pub name: String,
    /// Its `Description`.
    pub description: Option<String>,
}

/// One item of the virtual hardware (`Item`, `StorageItem`, `EthernetPortItem`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardwareItem {
    /// Every child element's text, by local name (`ResourceType`, `InstanceID`, ...).
    pub fields: HashMap<String, String>,
}

impl HardwareItem {
    /// The text of child `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(|s| s.trim())
    }
    /// `ResourceType` as a number.
    pub fn resource_type(&self) -> Option<u32> {
        self.get("ResourceType")?.parse().ok()
    }
}

/// The virtual machine (`VirtualSystem`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualSystem {
    /// `ovf:id`.
    pub id: String,
    /// `Name`.
    pub name: Option<String>,
    /// The CIM operating-system code (`OperatingSystemSection/@ovf:id`).
    pub os_id: Option<String>,
    /// The guest type: `vmw:osType`, VirtualBox's `vbox:OSType`, or the section's
    /// `Description`.
    pub os_type: Option<String>,
    /// Virtual hardware families (`vssd:VirtualSystemType`, e.g. `vmx-14`).
    pub hardware_family: Option<String>,
    /// Every hardware item, in document order.
    pub items: Vec<HardwareItem>,
    /// `vmw:Config` keys and values of the hardware section (e.g. `firmware`).
    pub vmw_config: Vec<(String, String)>,
}

/// What an OVF descriptor says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// `1.x` or `2.x`, from the envelope's namespace.
    pub version: String,
    /// `References`, in order.
    pub files: Vec<FileRef>,
    /// `DiskSection`, in order.
    pub disks: Vec<Disk>,
    /// `NetworkSection`, in order.
    pub networks: Vec<Network>,
    /// The first `VirtualSystem` (inside a `VirtualSystemCollection` if need be).
    pub system: Option<VirtualSystem>,
}

impl Envelope {
    /// The file with `ovf:id` `id` (the first of that id).
    pub fn file(&self, id: &str) -> Option<&FileRef> {
        self.files.iter().find(|f| f.id == id)
    }

    /// The file backing each disk, in `DiskSection` order. Files are looked up by id in a
    /// map built once: a hostile OVF may hold 100,000 disks and as many files.
    pub fn disk_files(&self) -> impl Iterator<Item = (&Disk, Option<&FileRef>)> {
        let mut by_id: HashMap<&str, &FileRef> = HashMap::with_capacity(self.files.len());
        for f in &self.files {
            by_id.entry(f.id.as_str()).or_insert(f);
        }
        self.disks
            .iter()
            .map(move |d| (d, d.file_ref.as_deref().and_then(|r| by_id.get(r).copied())))
    }

    /// The member holding the first disk: the first `DiskSection` disk with a file, or
    /// else the first referenced `.vmdk` file.
    pub fn first_disk_file(&self) -> Option<&FileRef> {
        self.disk_files().find_map(|(_, f)| f).or_else(|| {
            self.files
                .iter()
                .find(|f| f.href.to_ascii_lowercase().ends_with(".vmdk"))
        })
    }

    /// Virtual CPUs (`ResourceType` 3).
    pub fn cpus(&self) -> Option<u64> {
        let item = self.item_of_type(3)?;
        item.get("VirtualQuantity")?.parse().ok()
    }

    /// Memory in MiB (`ResourceType` 4, in its `AllocationUnits`).
    pub fn memory_mib(&self) -> Option<u64> {
        let item = self.item_of_type(4)?;
        let q: u64 = item.get("VirtualQuantity")?.parse().ok()?;
        let unit = item.get("AllocationUnits").unwrap_or("byte * 2^20");
        Some(q.checked_mul(units_factor(unit)?)? >> 20)
    }

    fn item_of_type(&self, t: u32) -> Option<&HardwareItem> {
        self.system
            .as_ref()?
            .items
            .iter()
            .find(|i| i.resource_type() == Some(t))
    }

    /// The controller `disk` hangs off, described as "SCSI (lsilogic)", "IDE", ...
    pub fn controller_of(&self, disk: &Disk) -> Option<String> {
        self.controllers().describe(disk)
    }

    /// The controllers of every disk, looked up through maps built once ([`Controllers`]):
    /// [`Envelope::controller_of`] per disk would scan every hardware item for each.
    pub fn controllers(&self) -> Controllers<'_> {
        let mut by_disk = HashMap::new();
        let mut by_instance = HashMap::new();
        if let Some(sys) = &self.system {
            for i in &sys.items {
                if let Some(h) = i.get("HostResource") {
                    by_disk.entry(h.trim_start_matches("ovf:")).or_insert(i);
                }
                if let Some(id) = i.get("InstanceID") {
                    by_instance.entry(id).or_insert(i);
                }
            }
        }
        Controllers {
            by_disk,
            by_instance,
        }
    }
}

/// The hardware items of a virtual system by disk (`HostResource`) and by `InstanceID`.
#[derive(Debug)]
pub struct Controllers<'a> {
    by_disk: HashMap<&'a str, &'a HardwareItem>,
    by_instance: HashMap<&'a str, &'a HardwareItem>,
}

impl Controllers<'_> {
    /// The controller `disk` hangs off, described as "SCSI (lsilogic)", "IDE", ...
    pub fn describe(&self, disk: &Disk) -> Option<String> {
        let item = self
            .by_disk
            .get(format!("/disk/{}", disk.disk_id).as_str())?;
        let ctl = self.by_instance.get(item.get("Parent")?)?;
        let kind = match ctl.resource_type()? {
            5 => "IDE",
            6 => "SCSI",
            20 => match ctl.get("ResourceSubType") {
                Some(s) if s.to_ascii_lowercase().contains("nvme") => "NVMe",
                _ => "SATA",
            },
            _ => "controller",
        };
        Some(match ctl.get("ResourceSubType") {
            Some(s) if !s.is_empty() => format!("{kind} ({s})"),
            _ => kind.to_string(),
        })
    }
}

/// The factor an allocation-unit string stands for: `byte`, `byte * 2^N`, `byte * 10^N`,
/// and the older `KB`/`MB`/`GB`/`TB` and `KiloBytes`... names; `None` when unknown.
pub(crate) fn units_factor(units: &str) -> Option<u64> {
    let u: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let u = u.to_ascii_lowercase();
    let named = match u.as_str() {
        "" | "byte" | "bytes" | "b" => Some(1),
        "kb" | "kilobytes" => Some(1 << 10),
        "mb" | "megabytes" => Some(1 << 20),
        "gb" | "gigabytes" => Some(1 << 30),
        "tb" | "terabytes" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let rest = u.strip_prefix("byte*")?;
    let (base, exp) = rest.split_once('^')?;
    let base: u64 = base.parse().ok()?;
    let exp: u32 = exp.parse().ok()?;
    if base != 2 && base != 10 {
        return None;
    }
    base.checked_pow(exp)
}

/// Parse the descriptor `text` (the member or file `path`, for messages).
pub fn parse(text: &[u8], path: &Path) -> Result<Envelope> {
    let bad = |m: String| Error::corrupt(m).with_path(path);
    if text.len() as u64 > MAX_OVF_SIZE {
        return Err(bad(format!(
            "OVF descriptor is {} bytes (at most {MAX_OVF_SIZE})",
            text.len()
        )));
    }
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let text = std::str::from_utf8(text)
        .map_err(|e| bad(format!("OVF descriptor is not UTF-8 text ({e})")))?;
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let doc = Document::parse_with_options(text, opts).map_err(|e| match e {
        roxmltree::Error::DtdDetected => bad(
            "OVF descriptor carries a DTD, which is refused: DTDs declare the entities of \
             entity-expansion (billion laughs) and external-entity attacks, and no OVF needs one"
                .into(),
        ),
        e => bad(format!("OVF descriptor is not well-formed XML: {e}")),
    })?;
    let root = doc.root_element();
    let version = match root.tag_name().namespace() {
        Some(OVF_NS_1) => "1.x",
        Some(OVF_NS_2) => "2.x",
        Some(ns) if ns.starts_with("http://schemas.dmtf.org/ovf/envelope/") => "unknown",
        _ => "",
    };
    if root.tag_name().name() != "Envelope" || version.is_empty() {
        return Err(bad(format!(
            "not an OVF descriptor: the root element is <{}> in namespace {:?}, not an OVF \
             <Envelope>",
            root.tag_name().name(),
            root.tag_name().namespace().unwrap_or("")
        )));
    }
    let mut env = Envelope {
        version: version.into(),
        ..Default::default()
    };
    for section in root.children().filter(Node::is_element) {
        match section.tag_name().name() {
            "References" => {
                for f in children_named(section, "File") {
                    env.files.push(FileRef {
                        id: attr(f, "id").unwrap_or_default().to_string(),
                        href: attr(f, "href").unwrap_or_default().to_string(),
                        size: attr(f, "size").and_then(|s| s.trim().parse().ok()),
                        chunk_size: attr(f, "chunkSize").and_then(|s| s.trim().parse().ok()),
                        compression: attr(f, "compression").map(str::to_string),
                    });
                }
            }
            "DiskSection" | "VirtualDiskDescSection" => {
                for d in children_named(section, "Disk") {
                    let capacity_text = attr(d, "capacity").unwrap_or_default().to_string();
                    let capacity_units = attr(d, "capacityAllocationUnits")
                        .unwrap_or("byte")
                        .to_string();
                    let capacity = capacity_text
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .and_then(|c| c.checked_mul(units_factor(&capacity_units)?));
                    env.disks.push(Disk {
                        disk_id: attr(d, "diskId").unwrap_or_default().to_string(),
                        file_ref: attr(d, "fileRef").map(str::to_string),
                        capacity,
                        capacity_text,
                        capacity_units,
                        format: attr(d, "format").map(str::to_string),
                        populated_size: attr(d, "populatedSize")
                            .and_then(|s| s.trim().parse().ok()),
                    });
                }
            }
            "NetworkSection" => {
                for n in children_named(section, "Network") {
                    env.networks.push(Network {
                        name: attr(n, "name").unwrap_or_default().to_string(),
                        description: child_text(n, "Description"),
                    });
                }
            }
            "VirtualSystem" if env.system.is_none() => {
                env.system = Some(virtual_system(section));
            }
            "VirtualSystemCollection" if env.system.is_none() => {
                env.system = section
                    .descendants()
                    .find(|n| n.is_element() && n.tag_name().name() == "VirtualSystem")
                    .map(virtual_system);
            }
            _ => {}
        }
    }
    Ok(env)
}

fn virtual_system(vs: Node) -> VirtualSystem {
    let mut sys = VirtualSystem {
        id: attr(vs, "id").unwrap_or_default().to_string(),
        name: child_text(vs, "Name"),
        ..Default::default()
    };
    for section in vs.children().filter(Node::is_element) {
        match section.tag_name().name() {
            "OperatingSystemSection" => {
                sys.os_id = attr(section, "id").map(str::to_string);
                sys.os_type = section
                    .attributes()
                    .find(|a| a.name() == "osType")
                    .map(|a| a.value().to_string())
                    .or_else(|| child_text(section, "OSType"))
                    .or_else(|| child_text(section, "Description"));
            }
            "VirtualHardwareSection" if sys.hardware_family.is_none() => {
                for el in section.children().filter(Node::is_element) {
                    let name = el.tag_name().name();
                    if name == "System" {
                        sys.hardware_family = child_text(el, "VirtualSystemType");
                    } else if name.ends_with("Item") {
                        let mut item = HardwareItem::default();
                        for c in el.children().filter(Node::is_element) {
                            item.fields
                                .entry(c.tag_name().name().to_string())
                                .or_insert_with(|| c.text().unwrap_or_default().to_string());
                        }
                        sys.items.push(item);
                    } else if name == "Config" && el.tag_name().namespace() == Some(VMW_NS) {
                        let v = |k: &str| {
                            el.attributes()
                                .find(|a| a.name() == k)
                                .map(|a| a.value().to_string())
                        };
                        if let (Some(k), Some(val)) = (v("key"), v("value")) {
                            sys.vmw_config.push((k, val));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    sys
}

/// Attribute `name` in an OVF namespace (or without a namespace, as some tools write it).
pub fn attr<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attributes()
        .find(|a| {
            a.name() == name && matches!(a.namespace(), None | Some(OVF_NS_1) | Some(OVF_NS_2))
        })
        .map(|a| a.value())
}

fn children_named<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn child_text(n: Node, name: &str) -> Option<String> {
    children_named(n, name)
        .next()
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VBOX: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="2.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vbox="http://www.virtualbox.org/ovf/machine" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="vm-disk001.vmdk"/></References>
  <DiskSection><Info>x</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="x"/>
  </DiskSection>
  <NetworkSection><Info>n</Info><Network ovf:name="NAT"><Description>NAT</Description></Network></NetworkSection>
  <VirtualSystem ovf:id="vm">
    <Info>x</Info>
    <OperatingSystemSection ovf:id="94"><Info>x</Info><Description>Ubuntu_64</Description><vbox:OSType ovf:required="false">Ubuntu_64</vbox:OSType></OperatingSystemSection>
    <VirtualHardwareSection><Info>x</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <StorageItem><sasd:HostResource>/disk/vmdisk1</sasd:HostResource><sasd:InstanceID>9</sasd:InstanceID><sasd:Parent>5</sasd:Parent><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

    #[test]
    fn reads_a_virtualbox_ovf_2() {
        let env = parse(VBOX.as_bytes(), Path::new("x.ovf")).unwrap();
        assert_eq!(env.version, "2.x");
        assert_eq!(env.disks[0].capacity, Some(8 << 30));
        assert_eq!(env.first_disk_file().unwrap().href, "vm-disk001.vmdk");
        let sys = env.system.as_ref().unwrap();
        assert_eq!(sys.os_type.as_deref(), Some("Ubuntu_64"));
        assert_eq!(sys.hardware_family.as_deref(), Some("virtualbox-2.2"));
        assert_eq!(env.cpus(), Some(2));
        assert_eq!(env.memory_mib(), Some(2048));
        assert_eq!(
            env.controller_of(&env.disks[0]).as_deref(),
            Some("SATA (AHCI)")
        );
        assert_eq!(env.networks[0].name, "NAT");
    }

    #[test]
    fn refuses_dtds_entities_and_other_documents() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&lol2;</Envelope>"#;
        let e = parse(laughs.as_bytes(), Path::new("x.ovf")).unwrap_err();
        assert!(e.to_string().contains("DTD"), "{e}");
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&e;</Envelope>"#;
        assert!(parse(xxe.as_bytes(), Path::new("x.ovf")).is_err());
        let e = parse(b"<html/>", Path::new("x.ovf")).unwrap_err();
        assert!(e.to_string().contains("not an OVF"), "{e}");
        assert!(parse(b"<Envelope", Path::new("x.ovf")).is_err());
    }

    #[test]
    fn units() {
        assert_eq!(units_factor("byte"), Some(1));
        assert_eq!(units_factor("byte * 2^30"), Some(1 << 30));
        assert_eq!(units_factor("byte*10^3"), Some(1000));
        assert_eq!(units_factor("MegaBytes"), Some(1 << 20));
        assert_eq!(units_factor("byte * 2^99"), None);
        assert_eq!(units_factor("furlong"), None);
    }
}
