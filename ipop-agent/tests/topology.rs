//! The topology page in a real browser: three hosts on an underlay, their agents serving the
//! page (`--web-listen`), and Debian's headless Chromium driven through chromedriver
//! (WebDriver, the fantoccini crate) inside host 0's namespace. The page shows three live
//! nodes and three links, a conflict, and a killed agent's node and links turning dead.
//! Needs root, chromium and chromium-driver (`cargo xtask setup`).

mod support;

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use support::{Host, Underlay, eventually_within};

const SECRET: &str = "correct horse battery";
const WEB: &str = "127.0.0.1:8080";
const DRIVER: &str = "127.0.0.1:9515";
/// Container addresses per host, and one more on host 2 that claims host 0's first.
const IPS: [&str; 3] = ["10.0.3.10", "10.0.3.20", "10.0.3.30"];
/// A killed node is dead once the links to it time out (5 s) and the peers' next summaries
/// (at most a 2 s tick later) say so; the page polls every second.
const DEAD_WITHIN: Duration = Duration::from_secs(15);

fn three_hosts(underlay: &mut Underlay) -> (Vec<Host>, Vec<usize>) {
    underlay.start_rendezvous(SECRET);
    let (mut hosts, mut agents) = (Vec::new(), Vec::new());
    for (i, ip) in IPS.iter().enumerate() {
        let mut host = Host::new(&[ip]);
        host.join_underlay(underlay, i as u8 + 1);
        agents.push(host.start_member(&format!("h{i}"), SECRET, &["--web-listen", WEB]));
        hosts.push(host);
    }
    for host in &hosts {
        eventually_within(30, "every link up", || {
            let s = support::status(host, &host.pin_dir("lxcbr0"));
            s["peers"].as_array().unwrap().iter().filter(|p| p["up"] == true).count() == 2
        });
    }
    // Each container speaks (ARP), so its host learns it and the page can show it.
    for (i, host) in hosts.iter().enumerate() {
        let out = host.in_container(0, &["ping", "-c", "1", "-W", "2", IPS[(i + 1) % 3]]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    (hosts, agents)
}

/// chromedriver in `host`'s namespace, listening on `DRIVER`.
fn start_driver(host: &mut Host) {
    host.spawn(&["chromedriver", "--port=9515", "--allowed-ips=127.0.0.1"], "chromedriver.log");
    let probe = "exec 3<>/dev/tcp/127.0.0.1/9515";
    eventually_within(20, "chromedriver listens", || host.in_ns(&["bash", "-c", probe]).status.success());
}

async fn browser(profile: &std::path::Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox", // as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = serde_json::json!({"goog:chromeOptions": {"args": args, "binary": "/usr/bin/chromium"}});
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://{DRIVER}"))
        .await
        .expect("a WebDriver session with chromium")
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map(|v| v.len()).unwrap_or(0)
}

/// Polls the page until `ok` holds for it, or `within` passes; what the page said last.
async fn until(
    c: &Client,
    within: Duration,
    what: &str,
    ok: impl AsyncFn(&Client) -> bool,
) -> Result<Duration, String> {
    let t = Instant::now();
    while t.elapsed() < within {
        if ok(c).await {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let summary = match c.find(Locator::Id("summary")).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(e) => format!("no #summary: {e}"),
    };
    Err(format!("{what}: not within {within:?}; the page says {summary:?}"))
}

/// The browser's side: the page before, the screenshot, the page after agent 2 is killed
/// (`killed` says when).
async fn page_checks(
    profile: &std::path::Path,
    ready: mpsc::Sender<()>,
    killed: mpsc::Receiver<Instant>,
) -> Result<(), String> {
    let c = browser(profile).await;
    c.goto(&format!("http://{WEB}/")).await.map_err(|e| e.to_string())?;
    until(&c, Duration::from_secs(20), "three live nodes, three links up, round trips", async |c| {
        count(c, "svg g.node[data-state=alive]").await == 3
            && count(c, "svg line.link[data-state=up]").await == 3
            && count(c, "svg text.rtt").await == 3
    })
    .await?;
    // A container comes with its host's next summary (sent at the host's next tick once it
    // learned the container), which may follow the links' by a tick.
    for (i, ip) in IPS.iter().enumerate() {
        let host = format!("svg g.node[data-node=h{i}] text.host[data-ip=\"{ip}\"]");
        let drawn = format!("h{i}'s container {ip} drawn under it");
        until(&c, Duration::from_secs(10), &drawn, async |c| count(c, &host).await == 1).await?;
    }
    let title = c.find(Locator::Id("title")).await.map_err(|e| e.to_string())?.text().await.unwrap_or_default();
    if !title.contains("seen from h0") {
        return Err(format!("the title says {title:?}"));
    }
    let _ = ready.send(());
    until(&c, Duration::from_secs(20), "the conflict highlighted", async |c| {
        count(c, "svg g.node[data-node=h0][data-conflict=true]").await == 1
    })
    .await?;
    let png = c.screenshot().await.map_err(|e| e.to_string())?;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("topology.png");
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    let _ = ready.send(());
    let at = killed.recv().map_err(|_| "agent 2 was not killed".to_string())?;
    until(&c, DEAD_WITHIN, "h2 and its links dead", async |c| {
        count(c, "svg g.node[data-node=h2][data-state=dead]").await == 1
            && count(c, "svg line.link[data-state=up]").await == 1
            && count(c, "svg g.node[data-state=alive]").await == 2
    })
    .await?;
    eprintln!("figure: the page shows a killed agent's node dead {:.1} s after the kill", at.elapsed().as_secs_f64());
    let _ = c.close().await;
    Ok(())
}

#[test]
fn the_topology_page_draws_the_overlay_live_in_a_real_browser() {
    let mut underlay = Underlay::new();
    let (mut hosts, agents) = three_hosts(&mut underlay);
    start_driver(&mut hosts[0]);
    let profile = hosts[0].file("chromium-profile");
    let (ready_tx, ready) = mpsc::channel();
    let (killed, killed_rx) = mpsc::channel();
    let [h0, _, h2] = &mut hosts[..] else { unreachable!() };
    let result = thread::scope(|s| {
        let page = s.spawn(|| {
            h0.enter_this_thread();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(page_checks(&profile, ready_tx, killed_rx))
        });
        // Each step waits for the page's; a page that failed says why when joined.
        let next = || ready.recv_timeout(Duration::from_secs(60)).is_ok();
        if next() {
            // A container on h2 claims h0's address, asking for one nobody has (so the
            // request crosses): h0 and h1 refuse the claim, and say so.
            h2.add_container(IPS[0]);
            let _ = h2.in_container(1, &["arping", "-c", "2", "-w", "2", "-I", "eth0", "10.0.3.99"]);
            if next() {
                h2.stop_agent(agents[2], libc::SIGKILL);
                let _ = killed.send(Instant::now());
            }
        }
        drop(killed);
        page.join().unwrap()
    });
    if let Err(e) = result {
        panic!(
            "{e}\nchromedriver:\n{}",
            std::fs::read_to_string(hosts[0].file("chromedriver.log")).unwrap_or_default()
        );
    }
}
