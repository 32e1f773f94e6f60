//! Load (issue 8, part 5): many mixed jobs (copy, checksum, wipe) on one agent, measured
//! against one copy alone, with `Host.getJobs` latency from a concurrent poller, the agent's
//! peak RSS and its open fds before, during and after; and many jobs scheduled by
//! `sdm-client`'s `HostPool` over three agents sharing two domains.
//!
//! Quick form in `cargo test` (16 jobs of 8 MiB; 48 jobs over three agents); the full form with
//! `SDM_FULL=1` (64 jobs of 64 MiB; 500 jobs over three agents), see docs/reliability.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sdm_client::pool::{HostPool, PlacementRequest};
use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::*;
use sdm_tests::cluster::Cluster;
use sdm_tests::hostile::{fd_kinds, full, percentile, proc_stats, ProcStats};
use sdm_tests::*;

const MIB: u64 = 1 << 20;
/// Agent memory ceiling (issue 8).
const RSS_LIMIT: u64 = 128 << 20;
/// `Host.getJobs` p99 target (issue 8).
const GET_JOBS_P99: Duration = Duration::from_millis(20);

/// Samples a process's figures every 20 ms until stopped; returns the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<ProcStats>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = ProcStats::default();
            while !s.load(Ordering::Relaxed) {
                let p = proc_stats(pid);
                peak.rss = peak.rss.max(p.rss);
                peak.hwm = peak.hwm.max(p.hwm);
                peak.fds = peak.fds.max(p.fds);
                peak.threads = peak.threads.max(p.threads);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> ProcStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Calls `Host.getJobs` (no filter) every 10 ms on its own connection until stopped; returns
/// the latencies, and when each job was first seen finished.
fn start_poller(
    c: AgentClient,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Duration>, BTreeMap<Uuid, Instant>)> {
    tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut finished = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let r = c.api().get_jobs(None, None).await;
            let now = Instant::now();
            lat.push(now - t);
            if let Ok(m) = r {
                for (id, j) in m {
                    if !j.status.is_active() {
                        finished.entry(id).or_insert(now);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (lat, finished)
    })
}

/// A RAW volume of `mib` MiB, full of data when `fill`; returns (img, vol).
async fn volume(c: &AgentClient, sd: &Uuid, mib: u64, fill: bool) -> (Uuid, Uuid) {
    let v = new_volume(c, sd, mib * MIB, VolumeFormat::Raw).await;
    if fill {
        write_pattern(
            &v.path,
            0,
            (mib * MIB) as usize,
            mib + v.vol.as_str().len() as u64,
        );
    }
    (v.img, v.vol)
}

/// Everything known about the jobs of a run.
async fn wait_all(c: &AgentClient, ids: &[Uuid], timeout: Duration) -> BTreeMap<Uuid, JobInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = c.api().get_jobs(None, None).await.via(c).unwrap();
        let done = ids
            .iter()
            .all(|id| m.get(id).is_some_and(|j| !j.status.is_active()));
        if done {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not finish in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_jobs_on_one_agent() {
    let (n, mib) = if full() { (64usize, 64u64) } else { (16, 8) };
    let agent = AgentProc::start(AgentOptions::default());
    let c = agent.client();
    let (sd1, sd2, _, _) = default_domains(&c).await;
    let stats = c.api().get_stats().await.via(&c).unwrap();

    // One copy alone, for reference (three times; the best counts).
    let mut alone = Duration::MAX;
    for _ in 0..3 {
        let (si, sv) = volume(&c, &sd1, mib, true).await;
        let (di, dv) = volume(&c, &sd2, mib, false).await;
        let (src, dst) = (
            endpoint(&sd1, &si, &sv, None),
            endpoint(&sd2, &di, &dv, Some(0)),
        );
        let t = Instant::now();
        let job = start_copy(&c, src, dst, None).await;
        loop {
            let j = c.job(&job).await.unwrap().unwrap();
            if !j.status.is_active() {
                assert_eq!(j.status, JobStatus::Done, "{j:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        alone = alone.min(t.elapsed());
        c.api().delete_job(job).await.via(&c).unwrap();
    }
    let alone_rate = mib_s(mib * MIB, alone);

    // The mix: half copies, a quarter checksums, a quarter wipes (Image.delete with postZero).
    let copies = n / 2;
    let sums = n / 4;
    let wipes = n - copies - sums;
    let mut copy_pairs = Vec::new();
    for _ in 0..copies {
        let s = volume(&c, &sd1, mib, true).await;
        let d = volume(&c, &sd2, mib, false).await;
        copy_pairs.push((s, d));
    }
    let mut sum_vols = Vec::new();
    for _ in 0..sums {
        sum_vols.push(volume(&c, &sd1, mib, true).await);
    }
    let mut wipe_imgs = Vec::new();
    for _ in 0..wipes {
        wipe_imgs.push(volume(&c, &sd2, mib, true).await.0);
    }
    // Let writeback of the prepared data settle so it does not count against the run.
    let _ = std::process::Command::new("sync").status();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = proc_stats(agent.pid());
    let kinds_before = fd_kinds(agent.pid());
    let sampler = Sampler::start(agent.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let poller = start_poller(agent.client(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = Instant::now();
    let mut submits = Vec::new();
    for ((si, sv), (di, dv)) in &copy_pairs {
        let c = c.clone();
        let (src, dst) = (
            endpoint(&sd1, si, sv, None),
            endpoint(&sd2, di, dv, Some(0)),
        );
        submits.push(tokio::spawn(
            async move { start_copy(&c, src, dst, None).await },
        ));
    }
    for (img, vol) in &sum_vols {
        let (c, sd, img, vol) = (c.clone(), sd1.clone(), img.clone(), vol.clone());
        submits.push(tokio::spawn(async move {
            start_checksum(&c, &sd, &img, &vol).await
        }));
    }
    for img in &wipe_imgs {
        let (c, job, sd, img) = (c.clone(), uuid(), sd2.clone(), img.clone());
        submits.push(tokio::spawn(async move {
            let r = c
                .api()
                .delete_image(img, sd, Some(Flag(true)), None, None, Some(job.clone()))
                .await
                .via(&c)
                .unwrap();
            assert_eq!(r, job);
            job
        }));
    }
    let mut ids = Vec::new();
    for s in submits {
        ids.push(s.await.unwrap());
    }
    let submitted = t0.elapsed();
    let mid = c.api().get_stats().await.via(&c).unwrap();
    let infos = wait_all(
        &c,
        &ids,
        Duration::from_secs(if full() { 900 } else { 120 }),
    )
    .await;
    // Let the poller see the last one, then stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, finished) = poller.await.unwrap();
    let peak = sampler.finish();

    let last = ids
        .iter()
        .filter_map(|id| finished.get(id))
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    let wall = last - t0;
    let failed: Vec<&JobInfo> = ids
        .iter()
        .map(|id| &infos[id])
        .filter(|j| j.status != JobStatus::Done)
        .collect();
    let bytes: u64 = ids.iter().map(|id| infos[id].bytes_total).sum();
    let logical = n as u64 * mib * MIB;
    let agg_rate = mib_s(logical, wall);

    for id in &ids {
        c.api().delete_job(id.clone()).await.via(&c).unwrap();
    }
    // Our clients' keep-alive connections are not the agent's: close them first.
    drop(c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proc_stats(agent.pid());
    let kinds_after = fd_kinds(agent.pid());
    lat.sort();
    let (p50, p99, max) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        *lat.last().unwrap(),
    );

    eprintln!("\n## one agent, {n} mixed jobs of {mib} MiB ({copies} copies, {sums} checksums, {wipes} wipes)");
    eprintln!(
        "max_running_jobs = {} (the rest wait as pending; {} pending right after submission)",
        stats.max_running_jobs, mid.jobs_pending
    );
    eprintln!("| figure | value | target |\n|---|---|---|");
    eprintln!(
        "| one copy alone | {:.0} ms, {alone_rate:.0} MiB/s | |",
        alone.as_secs_f64() * 1e3
    );
    eprintln!(
        "| all {n} jobs | submitted in {:.0} ms, done after {:.2} s | |",
        submitted.as_secs_f64() * 1e3,
        wall.as_secs_f64()
    );
    eprintln!("| aggregate throughput | {agg_rate:.0} MiB/s ({:.0} % of one copy alone); jobs reported {} MiB | >= 90 % |", 100.0 * agg_rate / alone_rate, bytes / MIB);
    eprintln!("| Host.getJobs latency ({} calls) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | p99 <= 20 ms |", lat.len(), p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3);
    eprintln!(
        "| agent RSS | peak {:.1} MiB (high-water mark {:.1} MiB) | <= 128 MiB |",
        peak.rss as f64 / MIB as f64,
        peak.hwm as f64 / MIB as f64
    );
    eprintln!("| agent threads | peak {} | |", peak.threads);
    eprintln!("| agent fds | {} before, peak {}, {} after ({kinds_before:?} -> {kinds_after:?}) | no leak |", before.fds, peak.fds, after.fds);

    assert!(failed.is_empty(), "jobs failed: {failed:#?}");
    assert!(
        peak.hwm <= RSS_LIMIT,
        "AGENT BUG: RSS high-water mark {} MiB over 128 MiB",
        peak.hwm >> 20
    );
    assert!(
        after.fds <= before.fds + 2,
        "AGENT BUG: fd leak: {} before, {} after",
        before.fds,
        after.fds
    );
    if full() {
        assert!(
            p99 <= GET_JOBS_P99,
            "AGENT BUG: Host.getJobs p99 {p99:?} over {GET_JOBS_P99:?}"
        );
        assert!(agg_rate >= 0.9 * alone_rate, "aggregate throughput {agg_rate:.0} MiB/s below 90 % of one copy alone ({alone_rate:.0} MiB/s)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_over_three_agents_with_host_pool() {
    let n = if full() { 500usize } else { 48 };
    let cluster = Cluster::start(3).await;
    let c0 = cluster.client(0);
    let (sd1, sd2) = (cluster.sd1.clone(), cluster.sd2.clone());
    let pool = HostPool::new(cluster.urls()).unwrap();
    pool.refresh().await;

    // Half copies (1 MiB each, from a few sources into fresh destinations), half checksums.
    let copies = n / 2;
    let mut sources = Vec::new();
    for _ in 0..(n / 10).max(4) {
        sources.push(volume(&c0, &sd1, 1, true).await);
    }
    let mut dests = Vec::new();
    for _ in 0..copies {
        dests.push(volume(&c0, &sd2, 1, false).await);
    }
    let before: Vec<ProcStats> = cluster.agents.iter().map(|a| proc_stats(a.pid())).collect();
    let samplers: Vec<Sampler> = cluster
        .agents
        .iter()
        .map(|a| Sampler::start(a.pid()))
        .collect();

    // A follower polls every agent from the start: most jobs pending at once, and when each
    // job is first seen finished.
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (stop, urls) = (stop.clone(), cluster.urls());
        tokio::spawn(async move {
            let clients: Vec<AgentClient> =
                urls.iter().map(|u| AgentClient::new(u).unwrap()).collect();
            let mut max_pending = vec![0u64; clients.len()];
            let mut seen: BTreeMap<Uuid, (usize, JobInfo)> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for (i, c) in clients.iter().enumerate() {
                    if let Ok(m) = c.api().get_jobs(None, None).await {
                        let pending = m
                            .values()
                            .filter(|j| j.status == JobStatus::Pending)
                            .count() as u64;
                        max_pending[i] = max_pending[i].max(pending);
                        for (id, j) in m.into_iter().filter(|(_, j)| !j.status.is_active()) {
                            seen.entry(id).or_insert((i, j));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (max_pending, seen)
        })
    };

    // Place every job (the pool counts what it placed since the hosts' last stats), then
    // submit them 32 at a time.
    let t0 = Instant::now();
    let mut placed = Vec::new();
    for _ in 0..n {
        let placement = pool
            .place(&PlacementRequest {
                domains: vec![sd1.clone(), sd2.clone()],
                avoid: vec![],
                bytes: MIB,
            })
            .await
            .unwrap();
        placed.push((uuid(), placement));
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (job, placement)) in placed.iter().enumerate() {
        let cl = placement.client().clone();
        let (job, gate) = (job.clone(), gate.clone());
        let (si, sv) = sources[i % sources.len()].clone();
        let copy = (i % 2 == 0).then(|| dests[i / 2].clone());
        let (sd1, sd2) = (sd1.clone(), sd2.clone());
        tasks.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            match copy {
                Some((di, dv)) => {
                    let (src, dst) = (
                        endpoint(&sd1, &si, &sv, None),
                        endpoint(&sd2, &di, &dv, Some(0)),
                    );
                    cl.submit(&job, |h| {
                        let (job, src, dst) = (job.clone(), src.clone(), dst.clone());
                        async move { h.copy_data(job, src, dst, None, None, None, None).await }
                    })
                    .await
                }
                None => {
                    cl.submit(&job, |h| {
                        let (job, sd, img, vol) =
                            (job.clone(), sd1.clone(), si.clone(), sv.clone());
                        async move { h.checksum_volume(job, sd, img, vol, None).await }
                    })
                    .await
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().expect("submission");
    }
    let submitted = t0.elapsed();

    // Wait until the follower saw every job finished.
    let deadline = Instant::now() + Duration::from_secs(if full() { 900 } else { 180 });
    let ids: Vec<(Uuid, String)> = placed
        .iter()
        .map(|(j, p)| (j.clone(), p.url().to_string()))
        .collect();
    loop {
        let mut done = 0;
        for a in &cluster.agents {
            let c = a.client();
            let m = c.api().get_jobs(None, None).await.via(&c).unwrap();
            done += ids
                .iter()
                .filter(|(j, u)| u == &a.url && m.get(j).is_some_and(|x| !x.status.is_active()))
                .count();
        }
        if done == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} jobs finished in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let (max_pending, seen) = follower.await.unwrap();
    let mut outcome: BTreeMap<Uuid, (String, JobInfo)> = BTreeMap::new();
    for (job, url) in &ids {
        let (_, info) = seen.get(job).expect("the follower saw every job finish");
        outcome.insert(job.clone(), (url.clone(), info.clone()));
    }
    let wall = t0.elapsed();
    drop(placed);
    let peaks: Vec<ProcStats> = samplers.into_iter().map(Sampler::finish).collect();
    for a in &cluster.agents {
        let c = a.client();
        for (job, (url, _)) in &outcome {
            if url == &a.url {
                c.api().delete_job(job.clone()).await.via(&c).unwrap();
            }
        }
    }
    // Our clients' keep-alive connections are not the agents': close them first.
    drop(pool);
    drop(c0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<ProcStats> = cluster.agents.iter().map(|a| proc_stats(a.pid())).collect();

    let failed: Vec<_> = outcome
        .values()
        .filter(|(_, j)| j.status != JobStatus::Done)
        .collect();
    eprintln!(
        "\n## {n} jobs ({copies} copies of 1 MiB, {} checksums) placed by HostPool over 3 agents",
        n - copies
    );
    eprintln!(
        "submitted in {:.2} s, all finished after {:.2} s ({:.0} jobs/s); {} failed",
        submitted.as_secs_f64(),
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        failed.len()
    );
    eprintln!("| agent | jobs | most pending at once | peak RSS MiB | fds before / peak / after |\n|---|---|---|---|---|");
    for (i, a) in cluster.agents.iter().enumerate() {
        let count = outcome.values().filter(|(u, _)| u == &a.url).count();
        eprintln!(
            "| {} | {count} | {} | {:.1} | {} / {} / {} |",
            i + 1,
            max_pending[i],
            peaks[i].hwm as f64 / MIB as f64,
            before[i].fds,
            peaks[i].fds,
            after[i].fds
        );
    }
    assert!(failed.is_empty(), "jobs failed: {failed:#?}");
    for (i, a) in cluster.agents.iter().enumerate() {
        let count = outcome.values().filter(|(u, _)| u == &a.url).count();
        assert!(
            count >= n / 6,
            "agent {} ran only {count} of {n} jobs",
            i + 1
        );
        assert!(
            peaks[i].hwm <= RSS_LIMIT,
            "AGENT BUG: agent {} RSS {} MiB",
            i + 1,
            peaks[i].hwm >> 20
        );
        assert!(
            after[i].fds <= before[i].fds + 2,
            "AGENT BUG: agent {} fds {} -> {}",
            i + 1,
            before[i].fds,
            after[i].fds
        );
    }
}
