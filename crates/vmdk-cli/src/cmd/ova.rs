//! `vmdk ova`: show what an OVA appliance is (`info`) and build one vSphere imports
//! (`create`). Reading disks out of an OVA needs no subcommand: every command accepts
//! `X.ova` and `X.ova/DISK.vmdk`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use vmdk::ops::ova_create::{self, OvaOptions};
use vmdk::ova::{self, ApplianceSpec, Controller, Firmware, OvaInfo, OvfSource};
use vmdk::report::ova::{ova_info, status_name};
use vmdk::report::text::Printable;
use vmdk::storage::lock::{FileRole, LockRequest};

use crate::opts::OpenArgs;
use crate::output::OutputFormat;
use crate::progress::Progress;
use vmdk::qemu_syntax::size_to_str;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Show the virtual system, its disks and networks, and check the manifest's digests.
    Info(InfoArgs),
    /// Build an OVA from disks (VMDK, qcow2 or raw), written as streamOptimized VMDKs.
    Create(Box<CreateArgs>),
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Threads checking digests (0 = one per CPU).
    #[arg(short = 'm', value_name = "THREADS", default_value_t = 0)]
    threads: usize,
    /// Read the archive even while another process writes it.
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The OVA.
    ova: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The OVA to write.
    #[arg(short = 'o', value_name = "OUT.ova")]
    output: PathBuf,
    /// Keep this OVF descriptor, filling in the disks' sizes (its DiskSection order is the
    /// order of the DISK arguments). The virtual machine is the OVF's: --name, --os-type,
    /// --os-cim, --cpus, --memory, --hw, --firmware, --network and --controller cannot be
    /// given with it (edit the OVF instead).
    #[arg(long = "from-ovf", value_name = "TEMPLATE.ovf")]
    from_ovf: Option<PathBuf>,
    /// Virtual machine name (default: the output's file name without .ova).
    #[arg(long)]
    name: Option<String>,
    /// VMware guest type (vmw:osType; default other4xLinux64Guest).
    #[arg(long = "os-type", value_name = "TYPE")]
    os_type: Option<String>,
    /// CIM operating-system code (OperatingSystemSection ovf:id; default 100).
    #[arg(long = "os-cim", value_name = "CODE")]
    os_cim: Option<u32>,
    /// Virtual CPUs (default 2).
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Memory in MiB (default 1024).
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Virtual hardware family (default vmx-14).
    #[arg(long = "hw", value_name = "VMX")]
    hw: Option<String>,
    /// Boot firmware: bios (default) or efi.
    #[arg(long, value_name = "FIRMWARE")]
    firmware: Option<String>,
    /// Network the NIC connects to ("none" for no NIC; default "VM Network").
    #[arg(long, value_name = "NETWORK")]
    network: Option<String>,
    /// Disk controller: lsilogic (default), pvscsi or sata.
    #[arg(long, value_name = "CONTROLLER")]
    controller: Option<String>,
    /// zlib level of the disks' grains (0-9).
    #[arg(long = "compression-level", default_value_t = 6)]
    compression_level: u32,
    /// Worker threads (0 = one per CPU).
    #[arg(short = 'm', value_name = "THREADS", default_value_t = 0)]
    threads: usize,
    /// Show progress on stderr.
    #[arg(short = 'p')]
    progress: bool,
    /// Source format of every DISK (vmdk, qcow2 or raw); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    #[command(flatten)]
    open: OpenArgs,
    /// The disks, in order (the first is the boot disk).
    #[arg(required = true)]
    disks: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<u8> {
    match a.cmd {
        Sub::Info(a) => info(a),
        Sub::Create(a) => create(*a),
    }
}

fn info(a: InfoArgs) -> Result<u8> {
    let lock = LockRequest::for_open(FileRole::Metadata, false, a.force_share);
    let info = ova::inspect_in(&crate::namespace(), &a.ova, Some(lock), a.threads)?;
    let mut out = std::io::stdout().lock();
    match a.output {
        OutputFormat::Json => ova_info(&info).print_json(&mut out)?,
        OutputFormat::Human => print_human(&info, &mut out)?,
    }
    out.flush()?;
    // Anything found (a digest that does not match, a member the manifest does not cover,
    // two members of one name, ...) makes the archive one not to import as it is.
    Ok(if info.findings.is_empty() { 0 } else { 2 })
}

fn print_human(info: &OvaInfo, out: &mut impl Write) -> Result<()> {
    // Every string below comes from the archive: shown escaped.
    let p = |s: &str| Printable(s).to_string();
    let opt = |v: Option<&str>| v.map_or_else(|| "-".to_string(), p);
    if let Some(env) = &info.envelope {
        writeln!(
            out,
            "OVF: {} (OVF {})",
            opt(info.ovf_name.as_deref()),
            env.version
        )?;
        if let Some(sys) = &env.system {
            writeln!(
                out,
                "virtual system: {}",
                p(sys.name.as_deref().unwrap_or(&sys.id))
            )?;
            writeln!(out, "    os type: {}", opt(sys.os_type.as_deref()))?;
            writeln!(
                out,
                "    cpus: {}",
                opt(env.cpus().map(|c| c.to_string()).as_deref())
            )?;
            writeln!(
                out,
                "    memory: {}",
                opt(env.memory_mib().map(|m| format!("{m} MiB")).as_deref())
            )?;
            writeln!(
                out,
                "    hardware family: {}",
                opt(sys.hardware_family.as_deref())
            )?;
            if let Some((_, fw)) = sys.vmw_config.iter().find(|(k, _)| k == "firmware") {
                writeln!(out, "    firmware: {}", p(fw))?;
            }
        }
        writeln!(out, "disks:")?;
        let controllers = env.controllers();
        for (d, f) in env.disk_files() {
            writeln!(
                out,
                "    {}: {}",
                p(&d.disk_id),
                f.map_or("(no file)".to_string(), |f| p(&f.href))
            )?;
            match d.capacity {
                Some(c) => writeln!(out, "        capacity: {}", size_to_str(c))?,
                None => writeln!(
                    out,
                    "        capacity: {} ({})",
                    p(&d.capacity_text),
                    p(&d.capacity_units)
                )?,
            }
            if let Some(f) = d.format.as_deref() {
                writeln!(out, "        format: {}", p(f))?;
            }
            if let Some(s) = d.populated_size {
                writeln!(out, "        populated size: {}", size_to_str(s))?;
            }
            if let Some(m) = f.and_then(|f| info.member(&f.href)) {
                writeln!(out, "        file size: {}", size_to_str(m.size))?;
            }
            if let Some(c) = controllers.describe(d) {
                writeln!(out, "        controller: {}", p(&c))?;
            }
        }
        if !env.networks.is_empty() {
            writeln!(out, "networks:")?;
            for w in &env.networks {
                writeln!(out, "    {}", p(&w.name))?;
            }
        }
    } else {
        writeln!(out, "OVF: none")?;
    }
    match &info.manifest_name {
        None => writeln!(out, "manifest: none")?,
        Some(m) => {
            writeln!(out, "manifest: {}", p(m))?;
            for c in &info.digests {
                writeln!(
                    out,
                    "    {}({}): {}",
                    p(&c.entry.algorithm),
                    p(&c.entry.file),
                    status_name(&c.status)
                )?;
            }
        }
    }
    if let Some(c) = &info.certificate_name {
        writeln!(out, "certificate: {} (not verified)", p(c))?;
    }
    if !info.findings.is_empty() {
        writeln!(out, "problems:")?;
        for f in &info.findings {
            writeln!(out, "    {}: {}", f.code.as_str(), p(&f.message))?;
        }
    }
    Ok(())
}

/// The flags that describe the virtual machine, by name, each with whether it was given:
/// an OVF given with --from-ovf describes the machine itself.
fn machine_flags(a: &CreateArgs) -> [(&'static str, bool); 9] {
    [
        ("--name", a.name.is_some()),
        ("--os-type", a.os_type.is_some()),
        ("--os-cim", a.os_cim.is_some()),
        ("--cpus", a.cpus.is_some()),
        ("--memory", a.memory.is_some()),
        ("--hw", a.hw.is_some()),
        ("--firmware", a.firmware.is_some()),
        ("--network", a.network.is_some()),
        ("--controller", a.controller.is_some()),
    ]
}

fn create(a: CreateArgs) -> Result<u8> {
    let ovf = match &a.from_ovf {
        Some(t) => {
            let given: Vec<&str> = machine_flags(&a)
                .into_iter()
                .filter_map(|(flag, given)| given.then_some(flag))
                .collect();
            if !given.is_empty() {
                bail!(
                    "{} cannot be used with --from-ovf: the virtual machine is the one '{}' \
                     describes (edit it there)",
                    given.join(", "),
                    t.display()
                );
            }
            let text = std::fs::read(t).with_context(|| format!("reading '{}'", t.display()))?;
            OvfSource::Template(ova::Template::parse(text, t)?)
        }
        None => {
            let d = ApplianceSpec::default();
            let name = match &a.name {
                Some(n) => n.clone(),
                None => a
                    .output
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| d.name.clone()),
            };
            let firmware = match a.firmware.as_deref() {
                None => d.firmware,
                Some("bios") => Firmware::Bios,
                Some("efi" | "uefi") => Firmware::Efi,
                Some(other) => bail!("unknown firmware '{other}' (expected bios or efi)"),
            };
            let network = match a.network.as_deref() {
                None => d.network,
                Some("none") => None,
                Some(n) => Some(n.to_string()),
            };
            OvfSource::Compose(ApplianceSpec {
                name,
                os_type: a.os_type.clone().unwrap_or(d.os_type),
                os_cim: a.os_cim.unwrap_or(d.os_cim),
                cpus: a.cpus.unwrap_or(d.cpus),
                memory_mib: a.memory.unwrap_or(d.memory_mib),
                hardware: a.hw.clone().unwrap_or(d.hardware),
                firmware,
                network,
                controller: match &a.controller {
                    Some(c) => Controller::parse(c)?,
                    None => d.controller,
                },
            })
        }
    };
    let controller = match &ovf {
        OvfSource::Compose(s) => s.controller,
        OvfSource::Template(_) => Controller::LsiLogic,
    };
    let opts = OvaOptions {
        threads: a.threads,
        compression_level: a.compression_level,
        adapter: match controller {
            Controller::Sata => vmdk::AdapterType::Ide,
            _ => vmdk::AdapterType::Lsilogic,
        },
        durable: false,
    };
    let open = a.open.options();
    let sources = a
        .disks
        .iter()
        .map(|d| crate::opts::open_disk(d, a.format.as_deref(), &open))
        .collect::<vmdk::Result<Vec<_>>>()?;
    let refs: Vec<&dyn vmdk::Disk> = sources.iter().map(|s| &**s).collect();
    let pb = Progress::new(a.progress);
    let progress = |done: u64, total: u64| pb.update(done, total);
    let ns = crate::namespace();
    let r = ova_create::create(&a.output, &*ns, &refs, &ovf, &opts, &progress);
    pb.end(r.is_ok());
    r?;
    Ok(0)
}
