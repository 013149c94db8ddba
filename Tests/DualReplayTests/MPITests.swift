import Foundation
import Testing
@testable import DualReplay
#if canImport(Glibc)
import Glibc
#endif

/// MPI on one machine (docs/CLUSTER.md): the launcher detection, every collective through real
/// `mpirun` jobs of the built `dualreplay` (shared memory and TCP on loopback), grids,
/// data-parallel runs and onboardings on 1 to 4 ranks against the one-process run, a rank
/// killed with SIGKILL (the job stops within seconds, nothing half-written) then resumed with
/// another rank count, the state lock across jobs, and the launcher errors.
@Suite(.serialized) struct MPITests {
    // MARK: - launcher detection (no MPI involved)

    @Test func launcherIsDetectedFromItsEnvironment() throws {
        #expect(try Launch.detect([:]) == .alone)
        #expect(try Launch.detect(["PATH": "/usr/bin", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"]) == .alone)  // a batch script itself
        let ompi = try Launch.detect(["OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"])
        #expect(ompi.isLaunched && ompi.rank == 2 && ompi.size == 4)
        let pmix = try Launch.detect(["PMIX_RANK": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "1"])
        #expect(pmix.isLaunched && pmix.rank == 1 && pmix.size == 8)
        let pmi = try Launch.detect(["PMI_RANK": "3", "PMI_SIZE": "5"])
        #expect(pmi.isLaunched && pmi.rank == 3 && pmi.size == 5)
        // srun without an MPI plugin would run N copies of the whole job: refused with the fix
        #expect(throws: LaunchError.srunWithoutMPI(tasks: 4, rank: 1)) {
            try Launch.detect(["SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1"])
        }
        #expect(LaunchError.srunWithoutMPI(tasks: 4, rank: 1).localizedDescription.contains("srun --mpi=pmix"))
        // a process started by hand gets the one-process collective and never touches MPI
        let c = try Cluster.collective(environment: [:])
        #expect(c is SingleProcess && c.rank == 0 && c.size == 1)
    }

    @Test func oneProcessAgreeRethrowsTheOriginalError() throws {
        let one = SingleProcess()
        #expect(throws: RunnerError.data("x")) { try one.agree { throw RunnerError.data("x") } }
        #expect(try one.agree { 7 } == 7)
        #expect(try one.allGatherBytes([1, 2, 3]) == [[1, 2, 3]])
        #expect(JobError.tooManyRanks(ranks: 9, units: 8, what: "runs").localizedDescription.contains("at most 8"))
    }

    // MARK: - running mpirun

    static func mpirun() throws -> URL {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let u = URL(fileURLWithPath: String(dir)).appendingPathComponent("mpirun")
            if FileManager.default.isExecutableFile(atPath: u.path) { return u }
        }
        Issue.record("mpirun not found: `make setup` installs openmpi-bin")
        throw CocoaError(.fileNoSuchFile)
    }

    enum Transport { case sharedMemory, tcpLoopback }

    /// `mpirun` arguments for `ranks` local ranks (root, oversubscribed: 2 cores here).
    static func launcher(_ ranks: Int, _ transport: Transport = .sharedMemory) -> [String] {
        var a = ["--oversubscribe", "-np", "\(ranks)"]
        if transport == .tcpLoopback { a += ["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"] }
        return a
    }

    static var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["DR_MODEL"] = nil
        env[CrashInjection.environmentVariable] = nil
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        // inside containers the kernel's cross-memory attach is often not allowed
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        env["OPENBLAS_NUM_THREADS"] = "1"
        return env
    }

    struct Run {
        var status: Int32
        var signaled: Bool
        var stdout: String
        var stderr: String
        var seconds: Double
        var ok: Bool { status == 0 && !signaled }
    }

    /// Starts `mpirun <launcher> dualreplay <args>` (or the binary alone with `ranks == 0`); a
    /// job that has not ended after `timeout` seconds is killed and recorded as a hang.
    static func start(_ ranks: Int, _ args: [String], transport: Transport = .sharedMemory, wrap: String? = nil, cwd: URL? = nil,
                      logs: URL) throws -> (Process, URL, URL, Date) {
        let p = Process()
        if let cwd { p.currentDirectoryURL = cwd }
        let bin = try ResumeTests.binary().path
        if ranks == 0 {
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = args
        } else {
            p.executableURL = try mpirun()
            // `wrap` runs a shell line before exec'ing the binary on every rank (e.g. to record pids)
            let cmd = wrap.map { ["/bin/sh", "-c", $0 + "; exec \"$0\" \"$@\"", bin] } ?? [bin]
            p.arguments = launcher(ranks, transport) + cmd + args
        }
        p.environment = environment
        let (out, err) = try ReliabilityTests.launch(p, logs: logs)
        return (p, out, err, Date())
    }

    static func finish(_ s: (Process, URL, URL, Date), timeout: Double = 600) throws -> Run {
        let (p, out, err, t0) = s
        while p.isRunning && Date().timeIntervalSince(t0) < timeout { usleep(50_000) }
        let hung = p.isRunning
        if hung {
            kill(-p.processIdentifier, SIGKILL)
            p.terminate()
        }
        p.waitUntilExit()
        let r = Run(status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal,
                    stdout: String(decoding: try Data(contentsOf: out), as: UTF8.self),
                    stderr: String(decoding: try Data(contentsOf: err), as: UTF8.self), seconds: Date().timeIntervalSince(t0))
        if hung { Issue.record("the job hung: still running after \(Int(timeout)) s; stderr: \(r.stderr.suffix(2000))") }
        return r
    }

    static func run(_ ranks: Int, _ args: [String], transport: Transport = .sharedMemory, wrap: String? = nil, cwd: URL? = nil,
                    logs: URL, timeout: Double = 600) throws -> Run {
        try finish(try start(ranks, args, transport: transport, wrap: wrap, cwd: cwd, logs: logs), timeout: timeout)
    }

    // MARK: - the collectives through real jobs

    @Test(arguments: [(1, Transport.sharedMemory), (3, .sharedMemory), (2, .tcpLoopback)])
    func everyCollectiveArrivesIntact(ranks: Int, transport: Transport) throws {
        let logs = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: logs) }
        let r = try Self.run(ranks, ["mpi-check", "--floats", "5000"], transport: transport, logs: logs, timeout: 120)
        try #require(r.ok, "\(r.stderr)")
        struct Report: Decodable { var ranks: Int; var pids: [Int]; var allGatherFloats: Bool; var allGatherValues: Bool; var broadcasts: Bool; var ok: Bool; var library: String? }
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 1, "only rank 0 prints: \(r.stdout)")
        let rep = try JSONDecoder().decode(Report.self, from: Data(lines[0].utf8))
        #expect(rep.ranks == ranks && Set(rep.pids).count == ranks)
        #expect(rep.allGatherFloats && rep.allGatherValues && rep.broadcasts && rep.ok)
        #expect((rep.library ?? "").contains("Open MPI"))
    }

    // MARK: - experiment grids

    /// A small grid: 2 methods and 2 references over 2 orderings (8 runs) on 2 synthetic domains.
    static func gridConfig(_ root: URL, name: String = "grid", orderings: Int = 2, methods: String? = nil, references: Bool = true,
                           gradientChunk: Int = 0, valPerIntent: Int = 2, testPerIntent: Int = 3) throws -> URL {
        let model = try ReliabilityTests.model()
        let url = root.appendingPathComponent("\(name).json")
        let m = methods ?? #"[{"kind": "dual-replay", "adapter": {"bottleneck": 8, "layers": [4, 5]}}, {"kind": "lora-replay", "lora": {"rank": 4}}]"#
        try Data("""
        {"name": "\(name)", "model": "\(model.path)", "seed": 3, "latencySamples": 0, "orderings": \(orderings),
         "data": {"synthetic": {"domains": 2, "intentsPerDomain": 3, "trainPerIntent": 6, "valPerIntent": \(valPerIntent), "testPerIntent": \(testPerIntent), "seed": 5}},
         "training": {"epochs": 2, "batchSize": 8, "learningRate": 0.003, "bufferExamples": 12, "maxLength": 24,
                      "gradientChunk": \(gradientChunk), "routerTraining": {"epochs": 5}},
         "methods": \(m)\(references ? #", "references": [{"kind": "joint"}, {"kind": "single"}]"# : "")}
        """.utf8).write(to: url)
        return url
    }

    /// results.json without what may differ between two runs of one protocol: times, dates and
    /// how many ranks shared the job.
    static func comparable(_ url: URL) throws -> Data {
        func strip(_ v: Any) -> Any {
            if let d = v as? [String: Any] {
                var out: [String: Any] = [:]
                for (k, x) in d where !["createdAt", "timing", "communication", "trainSeconds", "evalSeconds", "trainExamplesPerSecond", "ranks", "parallel"].contains(k) { out[k] = strip(x) }
                return out
            }
            if let a = v as? [Any] { return a.map(strip) }
            return v
        }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        return try JSONSerialization.data(withJSONObject: strip(json), options: [.sortedKeys])
    }

    static func matrices(_ url: URL) throws -> [[UInt64]] {
        let r = try JSONDecoder().decode(ExperimentResults.self, from: Data(contentsOf: url))
        return r.runs.flatMap { [$0.routed.f1, $0.oracle.f1].map { $0.flatMap { $0 }.map(\.bitPattern) } }
    }

    /// The grid config and its one-process run (no launcher: no MPI_Init), made once for the tests below.
    static let oneProcess: Result<(config: URL, results: URL), Error> = Result {
        let root = try TestPaths.tempDir()
        let cfg = try gridConfig(root)
        let out = root.appendingPathComponent("one")
        let one = try run(0, ["run", "--config", cfg.path, "--threads", "1", "--out", out.path], logs: root)
        guard one.ok else { throw RunnerError.data("the one-process run failed: \(one.stderr.suffix(2000))") }
        return (cfg, out.appendingPathComponent("results.json"))
    }

    @Test func gridOverRanksWritesTheOneProcessResults() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let (cfg, oneResults) = try Self.oneProcess.get()
        func args(_ out: String, _ extra: [String] = []) -> [String] {
            ["run", "--config", cfg.path, "--threads", "1", "--out", root.appendingPathComponent(out).path] + extra
        }
        let reference = try Self.comparable(oneResults)
        let refMatrices = try Self.matrices(oneResults)
        #expect(refMatrices.count == 2 * (2 * 2 + 2))  // joint + 4 method runs have matrices; single does not
        // 2 ranks over TCP here; the resume test below finishes a grid on 3 ranks over shared memory
        for (ranks, transport) in [(2, Transport.tcpLoopback)] {
            let out = "grid-\(ranks)"
            let r = try Self.run(ranks, args(out, ["--parallel", "grid"]), transport: transport, logs: root)
            try #require(r.ok, "\(ranks) ranks: \(r.stderr)")
            let got = root.appendingPathComponent("\(out)/results.json")
            #expect(try Self.matrices(got) == refMatrices, "\(ranks) ranks: R matrices differ")
            #expect(try Self.comparable(got) == reference, "\(ranks) ranks: results.json differs from the one-process run")
            // only rank 0 reports: one results table on stdout
            #expect(r.stdout == (try String(contentsOf: root.appendingPathComponent("\(out)/results.md"), encoding: .utf8)) + "\n", "\(r.stdout)")
            #expect(r.stderr.contains("== grid: 8 runs over \(ranks) ranks"), "\(r.stderr)")
        }
    }

    /// A rank killed with SIGKILL in the second round: the job ends within seconds, partial.json
    /// holds the first round whole and nothing else was written; `--resume` on 3 ranks then ends
    /// with the results of an uninterrupted one-process run.
    @Test func killedRankStopsTheJobThenResumeWithAnotherRankCount() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let (cfg, oneResults) = try Self.oneProcess.get()
        let outDir = root.appendingPathComponent("killed")
        func args(_ out: URL, _ extra: [String] = []) -> [String] {
            ["run", "--config", cfg.path, "--threads", "1", "--out", out.path, "--parallel", "grid"] + extra
        }
        let pids = root.appendingPathComponent("pids")
        try FileManager.default.createDirectory(at: pids, withIntermediateDirectories: true)
        let job = try Self.start(2, args(outDir), wrap: "echo $$ > \(pids.path)/$OMPI_COMM_WORLD_RANK", logs: root)
        // wait for the first round to be saved, then kill rank 1 in the middle of the second
        let partial = outDir.appendingPathComponent("partial.json")
        let t0 = Date()
        while !FileManager.default.fileExists(atPath: partial.path) && job.0.isRunning && Date().timeIntervalSince(t0) < 300 { usleep(20_000) }
        try #require(FileManager.default.fileExists(atPath: partial.path) && job.0.isRunning, "the first round never finished")
        let pid1 = try #require(Int32(String(decoding: try Data(contentsOf: pids.appendingPathComponent("1")), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(kill(pid1, SIGKILL) == 0)
        let killedAt = Date()
        let killed = try Self.finish(job, timeout: 120)
        let stopped = Date().timeIntervalSince(killedAt)
        #expect(!killed.ok, "the job ended well although a rank was killed: \(killed.stderr)")
        #expect(stopped < 20, "the job took \(stopped) s to stop after a rank was killed")
        // nothing half-written: no results, a whole partial.json of the first round, no temporaries
        #expect(!FileManager.default.fileExists(atPath: outDir.appendingPathComponent("results.json").path))
        let saved = try JSONDecoder().decode(PartialResults.self, from: Data(contentsOf: partial))
        #expect(saved.runs.count + saved.single.count == 2, "one round of 2 ranks: \(saved.runs.map(\.method)) \(saved.single.keys)")
        let left = try FileManager.default.contentsOfDirectory(atPath: outDir.path)
        #expect(Set(left) == ["partial.json"], "\(left)")

        // the same command with --resume, on 3 ranks
        let resumed = try Self.run(3, args(outDir, ["--resume"]), logs: root)
        try #require(resumed.ok, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("2 of 8 runs reused"), "\(resumed.stderr)")
        #expect(try Self.comparable(outDir.appendingPathComponent("results.json")) == Self.comparable(oneResults))
    }

    // MARK: - data-parallel training

    /// Each rank's share of the sharded inference, from rank 0's line "inference sharded over N
    /// ranks: chunks a/b/c of T in P passes, utterances x/y/z of U".
    static func inferenceShares(_ stderr: String) -> (chunks: [Int], total: Int, passes: Int, rows: [Int], totalRows: Int)? {
        guard let line = stderr.split(separator: "\n").first(where: { $0.contains("inference sharded over") }) else { return nil }
        let words = line.split(separator: " ")
        func after(_ w: String, _ k: Int = 1) -> Substring? { words.firstIndex(of: Substring(w)).map { words[$0 + k] } }
        guard let c = after("chunks"), let t = after("chunks", 3), let p = after("in"), let r = after("utterances"), let u = after("utterances", 3)
        else { return nil }
        let ints = { (s: Substring) in s.split(separator: "/").compactMap { Int($0.trimmingCharacters(in: .punctuationCharacters)) } }
        guard let total = Int(t), let passes = Int(p), let totalRows = Int(u.trimmingCharacters(in: .punctuationCharacters)) else { return nil }
        return (ints(c), total, passes, ints(r), totalRows)
    }

    /// Every batch of 8 rows in 4 chunks of 2: one process, then 3 ranks, each computing its
    /// block of chunks; the chunk gradients are added in chunk order on every rank, and the
    /// inference passes (75 validation and 90 test rows per domain: two canonical chunks each,
    /// diagnostics on) are sharded over the ranks and gathered, so every number of every run is
    /// the one-process run's while each rank computed about a third of the inference chunks. A
    /// rank whose inference chunk fails stops the job (reported once, with its rank).
    @Test func dataParallelRunMatchesTheOneProcessRun() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let cfg = try Self.gridConfig(root, name: "data", orderings: 1, methods: #"[{"kind": "dual-replay", "adapter": {"bottleneck": 8, "layers": [4, 5]}, "heads": {"realignSteps": 5}}]"#,
                                      references: false, gradientChunk: 2, valPerIntent: 25, testPerIntent: 30)
        // with the linear probes and multi-intent scores (their passes are sharded too)
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: cfg)) as! [String: Any]
        json["diagnostics"] = true
        try JSONSerialization.data(withJSONObject: json).write(to: cfg)
        func args(_ out: String) -> [String] { ["run", "--config", cfg.path, "--threads", "1", "--out", root.appendingPathComponent(out).path] }
        let one = try Self.run(0, args("one"), logs: root)
        try #require(one.ok, "\(one.stderr)")
        let reference = root.appendingPathComponent("one/results.json")
        func moved(_ url: URL) throws -> CommunicationStats {
            try #require(try JSONDecoder().decode(ExperimentResults.self, from: Data(contentsOf: url)).runs.first?.communication)
        }
        let oneMoved = try moved(reference)
        #expect(oneMoved.gradientSteps > 0 && oneMoved.gradientBytes > 0 && oneMoved.inferencePasses == 0, "\(oneMoved)")
        // 3 ranks: blocks of 1, 1 and 2 chunks (the onboarding test below runs 1, 2 and 4 ranks)
        for (ranks, transport) in [(3, Transport.sharedMemory)] {
            let r = try Self.run(ranks, args("data-\(ranks)"), transport: transport, logs: root)
            try #require(r.ok, "\(ranks) ranks: \(r.stderr)")
            let got = root.appendingPathComponent("data-\(ranks)/results.json")
            #expect(try Self.matrices(got) == Self.matrices(reference), "\(ranks) ranks: R matrices differ")
            #expect(try Self.comparable(got) == Self.comparable(reference), "\(ranks) ranks: results.json differs")
            #expect(r.stderr.contains("on \(ranks) MPI ranks (data)"), "\(r.stderr)")
            // the same steps gather the same chunks whatever the rank count; inference now gathers too
            let m = try moved(got)
            #expect(m.gradientSteps == oneMoved.gradientSteps && m.gradientBytes == oneMoved.gradientBytes, "\(m) against \(oneMoved)")
            #expect(m.inferencePasses > 0 && m.inferenceBytes > 0, "\(m)")
            let shares = try #require(Self.inferenceShares(r.stderr), "no inference shares reported: \(r.stderr)")
            #expect(shares.chunks.count == ranks && shares.chunks.reduce(0, +) == shares.total && shares.rows.reduce(0, +) == shares.totalRows)
            #expect(shares.total > shares.passes, "only one-chunk passes: nothing to share out: \(shares)")
            for (rank, c) in shares.chunks.enumerated() {
                #expect(c > 0 && abs(c * ranks - shares.total) <= ranks * shares.passes, "rank \(rank) computed \(c) of \(shares.total) chunks")
            }
            #expect(r.stderr.components(separatedBy: "inference sharded over").count == 2, "reported once, by rank 0")
        }
        #expect(!one.stderr.contains("inference sharded"), "one process: \(one.stderr)")
        // rank 1 fails in its first inference chunk (the validation after domain 1): the job stops, reported once
        let failed = try Self.run(2, args("failed"), wrap: #"[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export DR_CRASH_AT=evalfail:1; true"#,
                                  logs: root, timeout: 120)
        #expect(!failed.ok && failed.stderr.contains("rank 1 of 2: injected failure in inference chunk 1"), "\(failed.stderr)")
        #expect(failed.stderr.components(separatedBy: "injected failure").count == 2, "reported once: \(failed.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root.appendingPathComponent("failed/results.json").path))
        // more ranks than chunks in a batch: refused before anything trains
        let five = try Self.run(5, args("five"), logs: root, timeout: 120)
        #expect(!five.ok && five.stderr.contains("5 ranks for 4 gradient chunks per batch"), "\(five.stderr)")
    }

    /// An onboarding job (2 domains, checkpoints every 2 steps) with chunked gradients.
    static func onboardJob(_ root: URL) throws -> (URL, Bool) -> [String] {
        let model = try ReliabilityTests.model()
        let files = try ResumeTests.writeDomains(root)
        let general = root.appendingPathComponent("general.jsonl")
        try Data(SyntheticCorpus.generalText(count: 40, seed: 2).map { "{\"text\": \"\($0)\"}\n" }.joined().utf8).write(to: general)
        let config = root.appendingPathComponent("onboard.json")
        try Data("""
        {"name": "onboard", "seed": 3, "latencySamples": 0, "data": {"synthetic": {"domains": 2}},
         "training": {"epochs": 2, "batchSize": 8, "learningRate": 0.002, "bufferExamples": 12, "gradientChunk": 2},
         "methods": [{"kind": "dual-replay", "adapter": {"bottleneck": 8, "layers": [4, 5]}}]}
        """.utf8).write(to: config)
        return { dir, resume in
            ["onboard", "--init", "--config", config.path, "--general", general.path, "--model", model.path, "--threads", "1",
             "--state", dir.path, "--checkpoint-every", "2"] + files.flatMap { ["--domain", $0] } + (resume ? ["--resume"] : [])
        }
    }

    /// `mpirun -np 1|2|4 dualreplay onboard` writes the one-process state byte for byte; a rank
    /// killed in the second domain stops the job, and `--resume` on another rank count continues
    /// from rank 0's checkpoint to the same bytes; a second job on the same state is refused
    /// while the first holds the lock, and a lock left by a killed job does not block.
    @Test func dataParallelOnboardingIsBitIdenticalAcrossRankCounts() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let job = try Self.onboardJob(root)
        let reference = root.appendingPathComponent("one")
        let one = try Self.run(0, job(reference, false), logs: root)
        try #require(one.ok, "\(one.stderr)")
        let ref = try StateTests.files(reference)
        for ranks in [1, 2, 4] {
            let dir = root.appendingPathComponent("ranks-\(ranks)")
            let r = try Self.run(ranks, job(dir, false), transport: ranks == 2 ? .tcpLoopback : .sharedMemory, logs: root)
            try #require(r.ok, "\(ranks) ranks: \(r.stderr)")
            let got = try StateTests.files(dir)
            #expect(got["params.safetensors"] == ref["params.safetensors"], "\(ranks) ranks: parameters differ")
            #expect(got["buffer.json"] == ref["buffer.json"], "\(ranks) ranks: buffer differs")
            let metrics = try JSONDecoder().decode([MetricsRow].self, from: got["metrics.json"]!)
            let refMetrics = try JSONDecoder().decode([MetricsRow].self, from: ref["metrics.json"]!)
            #expect(metrics.map(\.routedF1) == refMetrics.map(\.routedF1) && metrics.map(\.oracleF1) == refMetrics.map(\.oracleF1))
            #expect(r.stdout.components(separatedBy: "## Onboarded").count == 3, "rank 0 alone prints the two diffs: \(r.stdout)")
            if ranks > 1 {
                // evaluation, validation and prototypes were sharded: each chunk computed once, on two ranks at least
                // (these domains are one canonical chunk each, so a pass has at most two and the other ranks idle)
                let shares = try #require(Self.inferenceShares(r.stderr), "\(ranks) ranks: no inference shares reported: \(r.stderr)")
                #expect(shares.chunks.count == ranks && shares.chunks.reduce(0, +) == shares.total, "\(shares)")
                #expect(shares.chunks.filter { $0 > 0 }.count >= 2, "\(ranks) ranks: one rank computed everything: \(shares)")
            }
        }

        // 24 rows per domain, 6 new per batch: 8 steps per domain; rank 1 dies at step 11 (domain 2, after its checkpoint of step 2)
        let killedDir = root.appendingPathComponent("killed")
        let killed = try Self.run(2, job(killedDir, false), wrap: #"[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export DR_CRASH_AT=step:11; true"#,
                                  logs: root, timeout: 120)
        #expect(!killed.ok, "\(killed.stderr)")
        #expect(FileManager.default.fileExists(atPath: OnboardingCheckpoint.url(in: killedDir).path), "rank 0's checkpoint")
        let resumed = try Self.run(4, job(killedDir, true), logs: root)
        try #require(resumed.ok, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("resumed at step"), "\(resumed.stderr)")
        #expect(try StateTests.files(killedDir)["params.safetensors"] == ref["params.safetensors"], "killed on 2 ranks, resumed on 4: parameters differ")

        // one writer: a job frozen while holding the lock (rank 0 stops itself) refuses a second job, naming it
        let lockedDir = root.appendingPathComponent("locked")
        let first = try Self.start(2, job(lockedDir, false), wrap: #"[ "$OMPI_COMM_WORLD_RANK" = 0 ] && export DR_CRASH_AT=stop:3; echo $$ > \#(root.path)/rank$OMPI_COMM_WORLD_RANK; true"#,
                                   logs: root)
        let t0 = Date()
        var frozen = false
        while !frozen && Date().timeIntervalSince(t0) < 120 {
            usleep(100_000)
            if let pid = try? String(contentsOf: root.appendingPathComponent("rank0"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
               let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) {
                frozen = stat.split(separator: ")").last?.split(separator: " ").first == "T"
            }
        }
        try #require(frozen, "rank 0 of the first job never stopped")
        let second = try Self.run(2, job(lockedDir, true), logs: root, timeout: 120)
        let holder = try String(contentsOf: root.appendingPathComponent("rank0"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!second.ok && second.stderr.contains("locked by another dualreplay run: pid \(holder)"), "\(second.stderr)")
        #expect(second.stderr.components(separatedBy: "locked by another").count == 2, "reported once: \(second.stderr)")
        kill(Int32(holder)!, SIGKILL)
        _ = try Self.finish(first, timeout: 60)
        let after = try Self.run(2, job(lockedDir, true), logs: root)
        try #require(after.ok, "\(after.stderr)")
        #expect(after.stderr.contains("took over the state lock of pid \(holder)"), "\(after.stderr)")
        #expect(try StateTests.files(lockedDir)["params.safetensors"] == ref["params.safetensors"])
    }

    // MARK: - launcher errors

    @Test func launcherErrorsAreClear() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        // one method on one ordering is one run: two ranks would leave one idle
        let small = try Self.gridConfig(root, name: "one-run", orderings: 1, methods: #"[{"kind": "lora"}]"#, references: false)
        let out = root.appendingPathComponent("out").path
        let tooMany = try Self.run(2, ["run", "--config", small.path, "--out", out, "--parallel", "grid"], logs: root, timeout: 120)
        #expect(!tooMany.ok && tooMany.stderr.contains("2 ranks for 1 runs in this experiment's grid: start at most 1 ranks"), "\(tooMany.stderr)")
        #expect(tooMany.stderr.components(separatedBy: "2 ranks for 1 runs").count == 2, "reported once, by rank 0: \(tooMany.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/results.json"))
        // a verb that runs in one process is refused under mpirun instead of running twice
        let embed = try Self.run(2, ["embed", "--model", try ReliabilityTests.model().path], logs: root, timeout: 120)
        #expect(!embed.ok && embed.stderr.contains("`embed` runs in one process"), "\(embed.stderr)")
        // a failure seen by one rank alone (rank 1 runs elsewhere and cannot find the config):
        // reported once, with its rank, and every rank ends
        let two = try Self.gridConfig(root, name: "two-runs", orderings: 1, methods: #"[{"kind": "lora"}, {"kind": "lora-replay"}]"#, references: false)
        let lost = try Self.run(2, ["run", "--config", two.lastPathComponent, "--out", out, "--parallel", "grid"],
                                wrap: #"[ "$OMPI_COMM_WORLD_RANK" = 1 ] && cd /; true"#, cwd: root, logs: root, timeout: 120)
        #expect(!lost.ok && lost.stderr.contains("rank 1 of 2:") && lost.stderr.contains("two-runs.json"), "\(lost.stderr)")
        #expect(lost.stderr.components(separatedBy: "two-runs.json").count == 2, "reported once: \(lost.stderr)")
        // ranks that would run different experiments (rank 1 with other --threads) are refused before any training
        let other = try Self.run(2, ["run", "--config", two.path, "--out", out, "--parallel", "grid"],
                                 wrap: #"if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then set -- "$@" --threads 2; fi"#, logs: root, timeout: 300)
        #expect(!other.ok && other.stderr.contains("rank 1 sees another experiment than rank 0"), "\(other.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/partial.json"))
        // data-parallel is the default under mpirun
        let data = try Self.run(2, ["run", "--config", two.path, "--out", out], logs: root, timeout: 300)
        #expect(!data.ok && data.stderr.contains("--parallel grid"), "\(data.stderr)")
    }
}
