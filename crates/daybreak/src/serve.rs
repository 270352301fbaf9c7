//! Starts the boot servers (ProxyDHCP 67, PXE 4011, TFTP 69, HTTP) around one [`Booter`] (the
//! plan, the fleet or an API), and stops them cleanly on Ctrl-C or SIGTERM. Which loader each
//! firmware gets is [`crate::loaders`]'s; binding the sockets is [`crate::sockets`]'s.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pxe::driver::Stats as DhcpStats;
use tokio_util::sync::CancellationToken;

use crate::decision::Booter;
use crate::events::Hub;
use crate::fleet::Fleet;
use crate::ipxe;
use crate::plan::{Plan, PlanInput};
use crate::sockets::Iface;

/// How long open HTTP downloads get to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits for the boot events queued before it to be told.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub plan: PlanInput,
    /// Where clients reach the HTTP server (port, and an address to announce), shared by the
    /// DHCP answers and the scripts.
    pub http: pxe::HttpAddress,
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
    /// The status page, `/api/machines` and `/metrics`: where, and who may read them.
    pub admin: crate::admin::AdminOptions,
}

impl ServeOptions {
    /// The boot servers for `plan` on `listen`, with the defaults: ProxyDHCP on, TFTP on 69, the
    /// built-in iPXE binaries, no artifact server.
    pub fn new(plan: PlanInput, http: pxe::HttpAddress, listen: Ipv4Addr) -> ServeOptions {
        ServeOptions {
            plan,
            http,
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
            admin: Default::default(),
        }
    }
}

/// What decides, and what it was made of.
struct Deciders {
    booter: Arc<dyn Booter>,
    /// The command's plan (none in API mode).
    plan: Option<Arc<Plan>>,
    /// The fleet, when the command keeps machines.
    fleet: Option<Arc<Fleet>>,
    kernel: crate::kernel::KernelFacts,
}

/// The booter of `opts`: an API, else the plan, with a fleet around it when asked for.
fn deciders(opts: &ServeOptions, hub: &Arc<Hub>) -> anyhow::Result<Deciders> {
    if let Some(api) = &opts.api {
        return Ok(Deciders {
            booter: api.clone(),
            plan: None,
            fleet: None,
            kernel: Default::default(),
        });
    }
    let plan = Arc::new(Plan::new(&opts.plan)?);
    // Read once: the whole kernel is read to find its certificate table.
    let kernel = plan.kernel_facts();
    let fleet = match &opts.fleet {
        None => None,
        Some(f) => match Fleet::open(f, plan.clone(), kernel.arch, Some(hub.clone())) {
            Ok(made) => Some(made),
            // Without profiles the file store is a convenience: serve without it. A store the
            // operator named (etcd) is not.
            Err(e) if f.machines.is_none() && f.store.location == crate::store::Location::File => {
                tracing::warn!(
                    "{e:#}; machines are not remembered and there is no status page (give a usable --state-dir)"
                );
                None
            }
            Err(e) => return Err(e),
        },
    };
    let booter: Arc<dyn Booter> = match &fleet {
        Some(f) => f.clone(),
        None => plan.clone(),
    };
    Ok(Deciders {
        booter,
        plan: Some(plan),
        fleet,
        kernel,
    })
}

/// The interfaces ProxyDHCP answers on, and where clients reach HTTP: a specific `--listen`
/// address limits ProxyDHCP to the interface holding it and is announced to clients.
fn interfaces(opts: &ServeOptions) -> anyhow::Result<(Vec<Iface>, pxe::HttpAddress)> {
    let mut ifaces = crate::sockets::resolve_interfaces(&opts.interfaces)?;
    let mut http = opts.http;
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
        http.advertise.get_or_insert(opts.listen);
        if ifaces.is_empty() {
            ifaces.push(Iface {
                name: holder.name,
                index: holder.index,
                ipv4: opts.listen,
            });
        }
    }
    Ok((ifaces, http))
}

/// What each firmware is sent ([`crate::loaders`]), from the operator's files, the kernel and
/// what else the booter may boot; what is worth saying about it is logged.
fn choose_loaders(
    opts: &ServeOptions,
    d: &Deciders,
    http: pxe::HttpAddress,
) -> anyhow::Result<crate::loaders::Loaders> {
    use crate::loaders::{Chain, Given, Note, Setup};
    let given = Given::read(
        opts.ipxe_bios.as_deref(),
        opts.ipxe_efi64.as_deref(),
        opts.ipxe_arm64.as_deref(),
        opts.efi_build,
    )?;
    let others: Vec<pxe::CpuArch> = pxe::CpuArch::ALL
        .into_iter()
        .filter(|a| d.fleet.as_ref().is_some_and(|f| f.may_serve(*a)))
        .collect();
    let chain = match opts.plan.set.as_ref().and_then(|s| s.signed_chain.clone()) {
        Some((shim, grub)) => {
            // Files of an image: read only as regular files, through no symlink, and small.
            let read = |p: &std::path::Path| {
                artifacts::read_small(p, crate::loaders::MAX_LOADER).with_context(|| {
                    format!(
                        "cannot read {} (a regular file of at most {} MiB)",
                        p.display(),
                        crate::loaders::MAX_LOADER >> 20
                    )
                })
            };
            Some(Chain {
                shim: read(&shim)?.into(),
                grub: read(&grub)?.into(),
                from: format!("{}, {}", shim.display(), grub.display()),
            })
        }
        None => None,
    };
    let l = crate::loaders::loaders(&Setup {
        kernel: d.plan.as_ref().map(|_| d.kernel),
        others: &others,
        given: &given,
        chain: chain.as_ref(),
        http,
    });
    for n in &l.notes {
        match n {
            Note::Info(t) => tracing::info!("{t}"),
            Note::Warn(t) => tracing::warn!("{t}"),
        }
    }
    Ok(l)
}

pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let (ifaces, http) = interfaces(&opts)?;
    let hub = Arc::new(Hub::default());
    let d = deciders(&opts, &hub)?;
    tracing::info!("{}", d.booter.describe());
    let loaders = choose_loaders(&opts, &d, http)?;
    let mut tasks = Tasks::new(hub)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ipxe = ipxe::VERSION,
        "daybreak starting"
    );
    let counters = match opts.netboot {
        true => Some(start_netboot(&opts, &d, http, loaders, &ifaces, &mut tasks).await?),
        false => None,
    };
    if let (Some(addr), Some(plan)) = (opts.artifact_listen, &d.plan) {
        start_artifacts(addr, plan, &opts.plan, &mut tasks).await?;
    }
    if let Some(f) = &d.fleet {
        f.join(reached_at(http, &ifaces), http.port);
    }
    if let Some(api) = &opts.api {
        api.join(reached_at(http, &ifaces), http.port);
    }
    tracing::info!("ready");
    tasks.until_shutdown(counters).await;
    Ok(())
}

/// Where machines reach this replica, for the other replicas.
fn reached_at(http: pxe::HttpAddress, ifaces: &[Iface]) -> Vec<String> {
    match http.advertise {
        Some(a) => vec![a.to_string()],
        None if !ifaces.is_empty() => ifaces.iter().map(|i| i.ipv4.to_string()).collect(),
        None => udp::interfaces()
            .iter()
            .filter_map(|i| i.ipv4.filter(|a| !a.is_loopback()))
            .map(|a| a.to_string())
            .collect(),
    }
}

/// The artifact file server: the plan's boot files (and the ISO they are read from) for people
/// to fetch, never the cloud-config.
async fn start_artifacts(
    addr: SocketAddr,
    plan: &Plan,
    input: &PlanInput,
    tasks: &mut Tasks,
) -> anyhow::Result<()> {
    let iso = match input.set.as_ref().map(|s| &s.origin) {
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
    Ok(())
}

type Counters = (Arc<DhcpStats>, Arc<tftp::Stats>);

/// What runs until shutdown: HTTP servers, which finish their downloads within the grace period
/// once `cancel` fires, and background tasks (TFTP), which are aborted, and the ProxyDHCP
/// threads, which `dhcp_stop` ends (at shutdown, or when this is dropped).
struct Tasks {
    cancel: CancellationToken,
    http: tokio::task::JoinSet<()>,
    background: tokio::task::JoinSet<()>,
    dhcp_stop: udp::Stop,
    budget: Budget,
    /// Boot events of the netboot servers.
    hub: Arc<Hub>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.dhcp_stop.stop();
    }
}

impl Tasks {
    fn new(hub: Arc<Hub>) -> anyhow::Result<Tasks> {
        Ok(Tasks {
            cancel: CancellationToken::new(),
            http: Default::default(),
            background: Default::default(),
            dhcp_stop: udp::Stop::new().context("creating the ProxyDHCP threads' stop switch")?,
            budget: descriptor_budget(),
            hub,
        })
    }

    fn http<R: http::Router + 'static>(
        &mut self,
        listener: tokio::net::TcpListener,
        router: Arc<R>,
        observer: Arc<dyn http::Observer>,
    ) {
        let limits = self.budget.http.clone();
        self.http_with(listener, router, observer, limits);
    }

    fn http_with<R: http::Router + 'static>(
        &mut self,
        listener: tokio::net::TcpListener,
        router: Arc<R>,
        observer: Arc<dyn http::Observer>,
        limits: http::Limits,
    ) {
        self.http.spawn(http::serve(
            listener,
            router,
            limits,
            observer,
            self.cancel.clone(),
            SHUTDOWN_GRACE,
        ));
    }

    /// Runs until a signal, then stops: downloads get the grace period, a second signal ends
    /// them at once.
    async fn until_shutdown(mut self, counters: Option<Counters>) {
        let signal = shutdown_signal().await;
        tracing::info!(
            "{signal}: shutting down (up to {}s for open downloads; again to force)",
            SHUTDOWN_GRACE.as_secs()
        );
        self.cancel.cancel();
        self.background.abort_all();
        self.dhcp_stop.stop();
        tokio::select! {
            _ = async { while self.http.join_next().await.is_some() {} } => {}
            s = shutdown_signal() => tracing::warn!("{s} again: exiting now"),
        }
        // What the answers reported is told before the counts: the boot-events reader runs
        // only on CPU nobody else wants, and may be behind.
        let hub = self.hub.clone();
        let settled = tokio::task::spawn_blocking(move || hub.settle(SETTLE))
            .await
            .unwrap_or(false);
        if !settled {
            tracing::warn!(
                "boot events still queued after {}s were not logged",
                SETTLE.as_secs()
            );
        }
        match counters {
            Some((dhcp, tftp)) => {
                use std::sync::atomic::Ordering::Relaxed;
                tracing::info!(
                    dhcp = ?dhcp.snapshot(),
                    events_dropped = self.hub.dropped(),
                    tftp_completed = tftp.completed.load(Relaxed),
                    tftp_evicted = tftp.evicted.load(Relaxed),
                    tftp_busy = tftp.busy.load(Relaxed),
                    tftp_rate_limited = tftp.rate_limited.load(Relaxed),
                    "stopped"
                )
            }
            None => tracing::info!("stopped"),
        }
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

/// Sends every boot event to the metrics and the fleet's timelines, to the debug log, and as
/// pixiecore's lines when asked.
fn spread_events(
    tasks: &mut Tasks,
    metrics: Arc<crate::metrics::Metrics>,
    fleet: Option<Arc<Fleet>>,
    pixiecore_log: bool,
) -> std::io::Result<()> {
    tasks.hub.read(move |e| {
        metrics.observe(e);
        if let Some(f) = &fleet {
            f.observe(e);
        }
        tracing::debug!(
            mac = %e.mac.map_or_else(|| "-".to_string(), |m| m.to_string()),
            client = %e.peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
            step = ?e.step,
            "boot event"
        );
        if let Some(line) = crate::pixiecore::line(e).filter(|_| pixiecore_log) {
            tracing::info!("{line}");
        }
    })?;
    Ok(())
}

/// What the DHCP driver answers with: the HTTP address, the loaders, the interfaces; the booter
/// says which machines are answered. Its events (each answer, each lease) are only queued on the
/// DHCP path ([`Hub::dhcp`]): the next answer never waits on their log lines, locks or
/// allocations.
fn dhcp_config(
    d: &Deciders,
    http: pxe::HttpAddress,
    (boot_files, chain): (pxe::BootFiles, Option<pxe::BootFiles>),
    ifaces: &[Iface],
    tasks: &mut Tasks,
) -> Arc<pxe::driver::Config> {
    let booter = d.booter.clone();
    let hub = tasks.hub.clone();
    let interfaces: Vec<u32> = ifaces.iter().map(|i| i.index).collect();
    Arc::new(pxe::driver::Config {
        settings: pxe::endpoint::Settings {
            http,
            boot_files,
            interfaces: interfaces.clone(),
        },
        events: Some(pxe::driver::Sink(Arc::new(move |e| hub.dhcp(e)))),
        allow: Some(pxe::driver::Allow(Arc::new(move |c: &pxe::Client| {
            booter.answer(&c.machine())
        }))),
        chain: chain.map(|boot_files| pxe::endpoint::Settings {
            http,
            boot_files,
            interfaces,
        }),
    })
}

/// Binds and starts ProxyDHCP, TFTP and the boot HTTP server.
async fn start_netboot(
    opts: &ServeOptions,
    d: &Deciders,
    http: pxe::HttpAddress,
    loaders: crate::loaders::Loaders,
    ifaces: &[Iface],
    tasks: &mut Tasks,
) -> anyhow::Result<Counters> {
    let hub = tasks.hub.clone();
    let dhcp_stats = Arc::new(DhcpStats::default());
    let tftp_stats = Arc::new(tftp::Stats::default());
    let metrics = Arc::new(crate::metrics::Metrics::new(
        dhcp_stats.clone(),
        tftp_stats.clone(),
        hub.clone(),
    ));
    spread_events(tasks, metrics.clone(), d.fleet.clone(), opts.pixiecore_log)?;
    let listener = crate::sockets::bind_http(SocketAddr::from((opts.listen, http.port))).await?;
    let tftp_sock = crate::sockets::bind_tftp(opts.listen, opts.tftp_port)?;
    let dhcp_sockets = match opts.proxy_dhcp {
        true => crate::sockets::bind_dhcp()?,
        false => Vec::new(),
    };
    let dhcp_config = dhcp_config(d, http, (loaders.boot, loaders.chain), ifaces, tasks);
    log_start(opts, d, http, ifaces, &listener)?;
    let binaries = Arc::new(loaders.files);
    let (reports, known) = (hub.clone(), hub.clone());
    tasks.background.spawn(tftp::run(
        tftp_sock,
        binaries.clone(),
        tftp::Limits::default(),
        tasks.budget.tftp.clone(),
        tftp_stats.clone(),
        Arc::new(move |r| reports.on_tftp(r)),
        Arc::new(move |ip| known.booting(ip)),
    ));
    if opts.admin.syslog {
        if let Some(sock) = crate::sockets::bind_syslog(opts.listen) {
            tasks
                .background
                .spawn(crate::ipxe_says::receive(sock, hub.clone()));
        }
    }
    for (sock, port) in dhcp_sockets {
        let (config, stats) = (dhcp_config.clone(), dhcp_stats.clone());
        let sock = sock.into_blocking(&tasks.dhcp_stop);
        std::thread::Builder::new()
            .name(match port {
                pxe::Port::Dhcp => "dhcp-67".into(),
                pxe::Port::ProxyBoot => "dhcp-4011".into(),
            })
            .spawn(move || pxe::driver::run(sock, port, config, stats))?;
    }
    let routes = crate::routes::BootRoutes {
        booter: d.booter.clone(),
        http,
        binaries,
        hub: hub.clone(),
        syslog: opts.admin.syslog,
    };
    tasks.http(listener, Arc::new(routes), hub);
    start_admin(&opts.admin, metrics, d, tasks).await?;
    Ok((dhcp_stats, tftp_stats))
}

/// The admin listener: the status page, `/api/machines`, `/metrics`. The default address
/// taken (a second server on this host) is a warning; an address the operator chose, an error.
async fn start_admin(
    opts: &crate::admin::AdminOptions,
    metrics: Arc<crate::metrics::Metrics>,
    d: &Deciders,
    tasks: &mut Tasks,
) -> anyhow::Result<()> {
    let Some(addr) = opts.listen else {
        tracing::info!("admin listener off: no status page, /api/machines or /metrics");
        return Ok(());
    };
    let listener = match crate::sockets::bind_http(addr).await {
        Ok(l) => l,
        Err(e) if !opts.chosen => {
            tracing::warn!(
                "admin listener not started: {e:#} (give --admin-listen ADDR:PORT, or off)"
            );
            return Ok(());
        }
        Err(e) => return Err(e.context("--admin-listen")),
    };
    let routes = crate::admin::AdminRoutes {
        token: opts.token.clone(),
        hosts: opts.hosts.clone(),
        metrics: Some(metrics),
        machines: d
            .fleet
            .clone()
            .map(|f| f as Arc<dyn crate::admin::Machines>),
        live: Default::default(),
    };
    let shown = listener.local_addr()?;
    let what = match d.fleet.is_some() {
        true => "status page, /api/machines and /metrics",
        false => "/metrics",
    };
    let token = match opts.token.is_some() {
        true => ", token required",
        false => "",
    };
    tracing::info!("admin ({what}) on http://{shown}/{token}");
    tasks.http_with(
        listener,
        Arc::new(routes),
        Arc::new(http::Unobserved),
        crate::admin::limits(),
    );
    Ok(())
}

/// The startup summary: files served, the command line, where each server listens.
fn log_start(
    opts: &ServeOptions,
    d: &Deciders,
    http: pxe::HttpAddress,
    ifaces: &[Iface],
    listener: &tokio::net::TcpListener,
) -> anyhow::Result<()> {
    if let Some(plan) = &d.plan {
        for f in plan.files() {
            let from = f.path.as_ref().map_or_else(
                || "(rendered, in memory)".into(),
                |p| p.display().to_string(),
            );
            let name = if f.secret { "cloud-config" } else { &f.name };
            tracing::info!(name = %name, path = %from, bytes = f.size, "serving file");
        }
        let shown = match http.advertise {
            Some(a) => http.base(a.into()),
            None => pxe::http_base("<server>", http.port),
        };
        tracing::info!(cmdline = %plan.cmdline_redacted(&shown), "kernel command line (<server> is the address each client reached)");
        if plan.cloud_config.is_some() {
            tracing::info!(
                "cloud-config served on the netboot port only, at a random path that changes every run and is given only in the kernel command line"
            );
        }
    }
    if opts.proxy_dhcp {
        let on = if ifaces.is_empty() {
            "all interfaces".to_string()
        } else {
            ifaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.ipv4))
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
    Ok(())
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
