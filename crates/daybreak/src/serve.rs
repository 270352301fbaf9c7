//! Starts the boot servers (ProxyDHCP 67, PXE 4011, TFTP 69, HTTP) for a [`Plan`], and stops
//! them cleanly on Ctrl-C or SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pxe::driver::Stats as DhcpStats;
use tokio_util::sync::CancellationToken;

use crate::boot::{Plan, PlanInput};
use crate::events::Hub;
use crate::ipxe;

/// How long open HTTP downloads get to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub plan: PlanInput,
    /// Address TFTP and HTTP bind. A specific address also limits ProxyDHCP to the interface
    /// holding it and is advertised to clients.
    pub listen: Ipv4Addr,
    pub interfaces: Vec<String>,
    pub proxy_dhcp: bool,
    pub tftp_port: u16,
    pub ipxe_bios: Option<PathBuf>,
    pub ipxe_efi64: Option<PathBuf>,
    pub ipxe_arm64: Option<PathBuf>,
    /// The built-in iPXE for UEFI x64, when `ipxe_efi64` names no file.
    pub efi_build: Option<ipxe::EfiBuild>,
    /// Start the netboot servers (ProxyDHCP, TFTP, boot HTTP); off: only the artifact server.
    pub netboot: bool,
    /// Where the artifact file server listens, if at all.
    pub artifact_listen: Option<SocketAddr>,
    /// Also log each boot step as pixiecore does (`boot`, `start-pixie`, `api`).
    pub pixiecore_log: bool,
    /// pixiecore's API mode: each machine booted as this API says, instead of by `plan`.
    pub api: Option<Arc<crate::api::Api>>,
    /// Machine profiles, the machine store and the status page.
    pub fleet: Option<crate::fleet::FleetOptions>,
}

impl ServeOptions {
    /// The boot servers for `plan` on `listen`, with the defaults: ProxyDHCP on, TFTP on 69, the
    /// built-in iPXE binaries, no artifact server.
    pub fn new(plan: PlanInput, listen: Ipv4Addr) -> ServeOptions {
        ServeOptions {
            plan,
            listen,
            interfaces: Vec::new(),
            proxy_dhcp: true,
            tftp_port: 69,
            ipxe_bios: None,
            ipxe_efi64: None,
            ipxe_arm64: None,
            efi_build: None,
            netboot: true,
            pixiecore_log: false,
            api: None,
            fleet: None,
            artifact_listen: None,
        }
    }
}

pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let (mut binaries, mut boot_files) = ipxe::load(&ipxe::Overrides {
        bios: opts.ipxe_bios.as_deref(),
        efi64: opts.ipxe_efi64.as_deref(),
        arm64: opts.ipxe_arm64.as_deref(),
        efi64_build: opts.efi_build,
    })?;
    let mut plan_input = opts.plan.clone();
    let mut ifaces = crate::sockets::resolve_interfaces(&opts.interfaces)?;
    if !opts.listen.is_unspecified() {
        let holder = udp::interfaces()
            .into_iter()
            .find(|i| i.ipv4 == Some(opts.listen))
            .with_context(|| {
                format!(
                    "listen address {} is not assigned to any interface here",
                    opts.listen
                )
            })?;
        plan_input.http.advertise.get_or_insert(opts.listen);
        if ifaces.is_empty() {
            ifaces.push((holder.name, holder.index, opts.listen));
        }
    }
    let hub = Arc::new(Hub::default());
    let mut fleet = None;
    let mut kernel = crate::boot::KernelFacts::default();
    let router = Arc::new(match &opts.api {
        None => {
            let mut plan = Plan::new(&plan_input, binaries.clone())?.observed(hub.clone());
            // Read once: the whole kernel is read to find its certificate table.
            kernel = plan.kernel_facts();
            if let Some(f) = &opts.fleet {
                match crate::fleet::Fleet::new(f, &plan, kernel.arch, Some(hub.clone())) {
                    Ok(made) => {
                        tracing::info!("{}", made.describe());
                        plan.fleet = Some(made.clone());
                        fleet = Some(made);
                    }
                    // Without profiles the store is a convenience: serve without it.
                    Err(e) if f.machines.is_none() => tracing::warn!(
                        "{e:#}; machines are not remembered and there is no status page (give a usable --state-dir)"
                    ),
                    Err(e) => return Err(e),
                }
            }
            BootRouter::Plan(Arc::new(plan))
        }
        Some(api) => BootRouter::Api(crate::api::ApiRouter {
            api: api.clone(),
            http: plan_input.http,
            binaries: binaries.clone(),
            events: Some(hub.clone()),
        }),
    });

    // A signed kernel: UEFI x64 PXE machines get the signed chain (shim, GRUB), which boots
    // whether or not the firmware enforces Secure Boot; iPXE, unsigned, would be refused where
    // it does. Not in pixiecore's modes, which boot as pixiecore does, and not when the operator
    // chose the UEFI binary.
    if let BootRouter::Plan(plan) = &*router {
        use pxe::CpuArch as Arch;
        let chosen = opts.efi_build.is_some() || opts.ipxe_efi64.is_some();
        let signed = kernel.signed;
        let arch = kernel.arch.unwrap_or(Arch::Amd64);
        // Machines of an architecture get a loader only when there is a kernel for them: the
        // one given, or one a profile or a multi-arch image has.
        let serves = |a: Arch| arch == a || fleet.as_ref().is_some_and(|f| f.may_serve(a));
        if boot_files.efi_arm64.is_none() && serves(Arch::Arm64) {
            boot_files.efi_arm64 = Some("ipxe-arm64.efi".into());
        }
        if !serves(Arch::Amd64) {
            if opts.ipxe_bios.is_none() {
                boot_files.bios = None;
                boot_files.bios_ipxe = None;
            }
            if opts.ipxe_efi64.is_none() {
                boot_files.efi_x64 = None;
            }
        }
        tracing::info!(
            kernel = arch.as_str(),
            "machines answered: {}",
            [
                (Arch::Amd64, "x86-64 (BIOS and UEFI)"),
                (Arch::Arm64, "arm64 (UEFI)")
            ]
            .iter()
            .filter(|(a, _)| serves(*a))
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
        );
        if signed && arch == Arch::Amd64 && !chosen && !opts.pixiecore_log {
            boot_files.efi_x64_signed = Some("shimx64.efi".into());
            // With machine profiles, GRUB asks for its machine's own configuration by HTTP.
            let cfg = match &plan.fleet {
                Some(_) => crate::fleet::Fleet::grub_stub(plan),
                None => plan.grub_cfg(),
            };
            binaries.insert("grub/grub.cfg".into(), cfg.into_bytes().into());
            // The image's own shim and GRUB trust its distribution's kernels; Debian's built-in
            // ones trust Debian's.
            if let Some((shim, grub)) = plan_input.set.as_ref().and_then(|s| s.signed_chain.clone())
            {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
                };
                binaries.insert("shimx64.efi".into(), read(&shim)?.into());
                binaries.insert("grubx64.efi".into(), read(&grub)?.into());
                tracing::info!(
                    shim = %shim.display(),
                    grub = %grub.display(),
                    "the Secure Boot chain is the image's own shim and network GRUB (they trust its kernel)"
                );
            }
            tracing::info!(
                "the kernel carries a Secure Boot signature: UEFI x64 PXE machines get shim, then GRUB, then the kernel over HTTP (Secure Boot on or off)"
            );
        } else if !signed && arch == Arch::Amd64 {
            tracing::warn!(
                "the kernel carries no Secure Boot signature: UEFI machines that enforce Secure Boot will refuse to boot (iPXE is unsigned too); serve a signed kernel for them"
            );
        }
    }

    let mut tasks = Tasks {
        cancel: CancellationToken::new(),
        http: Default::default(),
        background: Default::default(),
        budget: descriptor_budget(),
        hub,
        fleet,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ipxe = ipxe::VERSION,
        "daybreak starting"
    );
    let mut counters = None;
    if opts.netboot {
        counters = Some(
            start_netboot(
                &opts,
                &plan_input,
                router.clone(),
                binaries,
                boot_files,
                &ifaces,
                &mut tasks,
            )
            .await?,
        );
    }
    if let (Some(addr), BootRouter::Plan(plan)) = (opts.artifact_listen, &*router) {
        let iso = match plan_input.set.as_ref().map(|s| &s.origin) {
            Some(artifacts::Origin::Iso { path, name }) => Some((path.as_path(), name.as_str())),
            _ => None,
        };
        let files = crate::routes::ArtifactFiles::new(plan, iso)?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            crate::sockets::bind_error(
                e,
                "tcp",
                addr.port(),
                "artifact file server",
                "another web server; change listen_addr or set disable_http_server=true",
            )
        })?;
        tracing::info!(
            "artifact files on http://{}/ ({}; never the cloud-config)",
            listener.local_addr()?,
            files.names().collect::<Vec<_>>().join(", ")
        );
        tasks.http(listener, Arc::new(files), Arc::new(http::Unobserved));
    }
    tracing::info!("ready");

    let signal = shutdown_signal().await;
    tracing::info!(
        "{signal}: shutting down (up to {}s for open downloads; again to force)",
        SHUTDOWN_GRACE.as_secs()
    );
    tasks.cancel.cancel();
    tasks.background.abort_all();
    tokio::select! {
        _ = async { while tasks.http.join_next().await.is_some() {} } => {}
        s = shutdown_signal() => tracing::warn!("{s} again: exiting now"),
    }
    match counters {
        Some((dhcp_stats, tftp_stats)) => {
            use std::sync::atomic::Ordering::Relaxed;
            tracing::info!(
            dhcp = ?dhcp_stats.snapshot(),
            tftp_completed = tftp_stats.completed.load(Relaxed),
            tftp_evicted = tftp_stats.evicted.load(Relaxed),
            tftp_busy = tftp_stats.busy.load(Relaxed),
            tftp_rate_limited = tftp_stats.rate_limited.load(Relaxed),
            "stopped"
            )
        }
        None => tracing::info!("stopped"),
    }
    Ok(())
}

type Counters = (Arc<DhcpStats>, Arc<tftp::Stats>);

/// What runs until shutdown: HTTP servers, which finish their downloads within the grace period
/// once `cancel` fires, and background tasks (TFTP, ProxyDHCP), which are aborted.
struct Tasks {
    cancel: CancellationToken,
    http: tokio::task::JoinSet<()>,
    background: tokio::task::JoinSet<()>,
    budget: Budget,
    /// Boot events of the netboot servers.
    hub: Arc<Hub>,
    /// Machine profiles and timelines, fed by the boot events.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Tasks {
    fn http<R: http::Router + 'static>(
        &mut self,
        listener: tokio::net::TcpListener,
        router: Arc<R>,
        observer: Arc<dyn http::Observer>,
    ) {
        self.http.spawn(http::serve(
            listener,
            router,
            self.budget.http.clone(),
            observer,
            self.cancel.clone(),
            SHUTDOWN_GRACE,
        ));
    }
}

/// How the descriptors this process may open are shared out.
#[derive(Debug, Clone)]
struct Budget {
    http: http::Limits,
    tftp: tftp::Budget,
}

/// Descriptors kept back for everything but client connections: served files, the store,
/// sockets of our own, logs.
const FD_RESERVE: u64 = 128;

/// Raises the soft descriptor limit to the hard one (the common soft 1024 is a legacy of
/// select(2), which nothing here uses) and shares it out: a quarter of what is left after the
/// reserve for TFTP transfers (at most 2048), the rest for HTTP connections (at most 16384), so
/// a flood of either runs into its own cap, never into EMFILE.
fn descriptor_budget() -> Budget {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    let nofile = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        } else {
            1024
        }
    };
    let spare = nofile.saturating_sub(FD_RESERVE).max(64);
    let tftp = (spare / 4).clamp(8, 2048) as usize;
    let http = (spare - spare / 4).clamp(32, 16384) as usize;
    tracing::debug!(nofile, http, tftp, "descriptor budget");
    Budget {
        http: http::Limits {
            max_connections: http,
            ..Default::default()
        },
        tftp: tftp::Budget {
            max_transfers: tftp,
            ..Default::default()
        },
    }
}

/// Binds and starts ProxyDHCP, TFTP and the boot HTTP server.
async fn start_netboot(
    opts: &ServeOptions,
    plan_input: &PlanInput,
    router: Arc<BootRouter>,
    binaries: tftp::Files,
    boot_files: pxe::BootFiles,
    ifaces: &[(String, u32, Ipv4Addr)],
    tasks: &mut Tasks,
) -> anyhow::Result<Counters> {
    let hub = tasks.hub.clone();
    let fleet = tasks.fleet.clone();
    let dhcp_stats = Arc::new(DhcpStats::default());
    let tftp_stats = Arc::new(tftp::Stats::default());
    let metrics = Arc::new(crate::metrics::Metrics::new(
        dhcp_stats.clone(),
        tftp_stats.clone(),
    ));
    // Every boot event, keyed by MAC, in the debug log (until the status page reads them too),
    // into the metrics, and pixiecore's lines when asked.
    let mut events = hub.subscribe();
    let pixiecore_log = opts.pixiecore_log;
    let observed = metrics.clone();
    let timelines = fleet.clone();
    tasks.background.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(e) => {
                    observed.observe(&e);
                    if let Some(f) = &timelines {
                        f.observe(&e);
                    }
                    tracing::debug!(
                        mac = %e.mac.map_or_else(|| "-".to_string(), |m| m.to_string()),
                        client = %e.peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
                        step = ?e.step,
                        "boot event"
                    );
                    if let Some(line) = crate::pixiecore::line(&e).filter(|_| pixiecore_log) {
                        tracing::info!("{line}");
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::debug!(skipped = n, "boot events skipped"),
                Err(RecvError::Closed) => break,
            }
        }
    });
    let listener =
        crate::sockets::bind_http(SocketAddr::from((opts.listen, plan_input.http.port))).await?;
    let tftp_sock = crate::sockets::bind_tftp(opts.listen, opts.tftp_port)?;
    let dhcp_sockets = if opts.proxy_dhcp {
        crate::sockets::bind_dhcp()?
    } else {
        Vec::new()
    };

    let dhcp_config = Arc::new(pxe::driver::Config {
        settings: pxe::endpoint::Settings {
            http: plan_input.http,
            boot_files,
            interfaces: ifaces.iter().map(|i| i.1).collect(),
        },
        events: Some({
            let hub = hub.clone();
            pxe::driver::Sink(Arc::new(move |e| hub.on_dhcp(e)))
        }),
        allow: match (&opts.api, &fleet) {
            (Some(api), _) => {
                let api = api.clone();
                Some(pxe::driver::Allow(Arc::new(move |c: &pxe::Client| {
                    api.allow(c.mac)
                })))
            }
            (None, Some(f)) => {
                let f = f.clone();
                Some(pxe::driver::Allow(Arc::new(move |c: &pxe::Client| {
                    f.allow(c)
                })))
            }
            (None, None) => None,
        },
    });

    // Startup summary.
    match &*router {
        BootRouter::Plan(plan) => {
            for f in plan.files() {
                let from = f.path.as_ref().map_or_else(
                    || "(rendered, in memory)".into(),
                    |p| p.display().to_string(),
                );
                let name = if f.secret { "cloud-config" } else { &f.name };
                tracing::info!(name = %name, path = %from, bytes = f.size, "serving file");
            }
            let shown = match plan_input.http.advertise {
                Some(a) => plan.base_url(a.into()),
                None => pxe::http_base("<server>", plan_input.http.port),
            };
            tracing::info!(cmdline = %plan.cmdline_redacted(&shown), "kernel command line (<server> is the address each client reached)");
            if plan.cloud_config.is_some() {
                tracing::info!(
                    "cloud-config served on the netboot port only, at a random path that changes every run and is given only in the kernel command line"
                );
            }
        }
        BootRouter::Api(a) => {
            tracing::info!("booting each machine as the API says: {}", a.api.describe())
        }
    }
    if opts.proxy_dhcp {
        let on = if ifaces.is_empty() {
            "all interfaces".to_string()
        } else {
            ifaces
                .iter()
                .map(|i| format!("{} ({})", i.0, i.2))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!("ProxyDHCP on UDP 67 and 4011, {on}");
    } else {
        tracing::info!("ProxyDHCP off: point your DHCP server's boot options at this host");
    }
    tracing::info!("TFTP on {}:{}", opts.listen, opts.tftp_port);
    tracing::info!(
        "HTTP on {} (boot script: /boot.ipxe)",
        listener.local_addr()?
    );

    let files: tftp::Files = binaries;
    tasks.background.spawn(tftp::run(
        tftp_sock,
        Arc::new(files),
        tftp::Limits::default(),
        tasks.budget.tftp.clone(),
        tftp_stats.clone(),
        {
            let hub = hub.clone();
            Arc::new(move |r| hub.on_tftp(r))
        },
        {
            let hub = hub.clone();
            Arc::new(move |ip| hub.booting(ip))
        },
    ));
    for (sock, port) in dhcp_sockets {
        tasks.background.spawn(pxe::driver::run(
            sock,
            port,
            dhcp_config.clone(),
            dhcp_stats.clone(),
        ));
    }

    tasks.http(listener, Arc::new(Served { router, metrics }), hub);
    Ok((dhcp_stats, tftp_stats))
}

/// The boot HTTP server's routes, and `/metrics` beside them.
struct Served {
    router: Arc<BootRouter>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl http::Router for Served {
    fn route(&self, req: &http::Request<'_>) -> http::Reply {
        if req.path == pxe::routes::METRICS {
            self.metrics.scraped();
            return http::Reply::memory(
                "_metrics",
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render().into_bytes(),
            );
        }
        self.router.route(req)
    }
}

/// What the boot HTTP server serves: the plan, or in API mode what the API says per machine.
enum BootRouter {
    Plan(Arc<Plan>),
    Api(crate::api::ApiRouter),
}

impl http::Router for BootRouter {
    fn route(&self, req: &http::Request<'_>) -> http::Reply {
        match self {
            BootRouter::Plan(p) => p.route(req),
            BootRouter::Api(a) => a.route(req),
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupt";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = term.recv() => "SIGTERM",
    }
}
