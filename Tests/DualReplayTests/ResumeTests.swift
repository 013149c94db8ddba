import Foundation
import Testing
@testable import DualReplay
#if canImport(Glibc)
import Glibc
#endif

/// Exact resume: an onboarding stopped at any step (Ctrl-C in process, SIGKILL of the real CLI at a
/// step, in the middle of publishing a checkpoint or a version) and continued with `--resume` ends
/// bit-identical to one that was never interrupted. Damaged or foreign checkpoints are refused.
@Suite struct ResumeTests {
    typealias S = StateTests

    static func bits(_ x: [Float]) -> [UInt32] { x.map(\.bitPattern) }

    /// Stops the phase when the global step counter reaches `at`.
    final class StopAt {
        var steps = 0
        let at: Int
        init(_ at: Int) { self.at = at }
        func plan(_ url: URL, every: Int, resume: OnboardingCheckpoint? = nil) -> ContinualState.CheckpointPlan {
            ContinualState.CheckpointPlan(url: url, every: every, resume: resume, shouldStop: { [self] in steps == at },
                                          afterStep: { [self] _ in steps += 1 })
        }
    }

    // MARK: - in process

    @Test func stoppedOnboardingResumesBitIdentically() throws {
        let domains = [S.domain("a", base: 0), S.domain("b", base: 6)]
        // reference: never interrupted, in one process
        let ref = try ContinualState.create(config: S.config(), encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        for d in domains { _ = try ref.onboard(d) }

        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let dir = root.appendingPathComponent("state"), ck = OnboardingCheckpoint.url(in: dir)
        // domain a: stopped after step 3 (shouldStop is polled after each step, before afterStep counts it)
        let s1 = try ContinualState.create(config: S.config(), encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        #expect(throws: RunnerError.interrupted(domain: "a", step: 4, total: 8)) {
            _ = try s1.onboard(domains[0], checkpoint: StopAt(3).plan(ck, every: 0))
        }
        let c1 = try OnboardingCheckpoint.read(ck)
        #expect(c1.domain == "a" && c1.baseVersion == 0 && c1.phase.progress.step == 4)
        // a new process: the state is created again and continues from the checkpoint
        let s2 = try ContinualState.create(config: S.config(), encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        _ = try s2.onboard(domains[0], checkpoint: StopAt(-1).plan(ck, every: 0, resume: c1))
        try s2.save(to: dir)
        // domain b: periodic checkpoints every 2 steps, stopped in its second epoch
        let s3 = try ContinualState.open(dir, encoder: try S.encoder())
        #expect(throws: RunnerError.interrupted(domain: "b", step: 5, total: 8)) {
            _ = try s3.onboard(domains[1], checkpoint: StopAt(4).plan(ck, every: 2))
        }
        let c2 = try OnboardingCheckpoint.read(ck)
        #expect(c2.domain == "b" && c2.baseVersion == 1 && c2.phase.progress.epoch == 1)
        let s4 = try ContinualState.open(dir, encoder: try S.encoder())
        _ = try s4.onboard(domains[1], checkpoint: StopAt(-1).plan(ck, every: 2, resume: c2))

        #expect(Self.bits(Array(s4.model.store.values.buffer)) == Self.bits(Array(ref.model.store.values.buffer)))
        #expect(Self.bits(Array(s4.model.store.moment2.buffer)) == Self.bits(Array(ref.model.store.moment2.buffer)))
        #expect(s4.model.optimizerStep == ref.model.optimizerStep)
        for i in 0..<2 {
            #expect(s4.metrics[i].routedF1 == ref.metrics[i].routedF1)
            #expect(s4.metrics[i].oracleF1 == ref.metrics[i].oracleF1)
            #expect(s4.metrics[i].validationF1 == ref.metrics[i].validationF1)
            #expect(s4.metrics[i].routerAccuracy == ref.metrics[i].routerAccuracy)
        }
        #expect(s4.learner.dual?.state == ref.learner.dual?.state)
        #expect(s4.learner.rng.state == ref.learner.rng.state)
    }

    @Test func damagedOrForeignCheckpointsAreRefused() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let ck = root.appendingPathComponent(OnboardingCheckpoint.fileName)
        let a = S.domain("a", base: 0)
        let s = try ContinualState.create(config: S.config(), encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        #expect(throws: RunnerError.self) { _ = try s.onboard(a, checkpoint: StopAt(1).plan(ck, every: 0)) }
        let good = try Data(contentsOf: ck)
        let c = try OnboardingCheckpoint.read(ck)

        func expectRefused(_ bytes: Data, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
            try? bytes.write(to: ck)
            do {
                _ = try OnboardingCheckpoint.read(ck)
                Issue.record("\(what) was accepted", sourceLocation: sourceLocation)
            } catch {
                #expect(error.localizedDescription.contains(ck.path), "\(what): \(error.localizedDescription)", sourceLocation: sourceLocation)
            }
        }
        var flipped = good
        flipped[good.count - 17] ^= 0x10  // a bit in the data section
        expectRefused(flipped, "a bit-flipped checkpoint")
        expectRefused(good.prefix(good.count / 2), "a truncated checkpoint")
        expectRefused(Data(), "an empty checkpoint")
        var header = good
        let r = header.range(of: Data(OnboardingCheckpoint.format.utf8))!
        header.replaceSubrange(r, with: Data("dualreplay.checkpoint/9".utf8))
        expectRefused(header, "a checkpoint of another format")
        try good.write(to: ck)

        // a checkpoint is only continued by the training it belongs to
        func expectMismatch(_ state: ContinualState, _ d: DomainData, _ cp: OnboardingCheckpoint, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try state.onboard(d, checkpoint: StopAt(-1).plan(ck, every: 0, resume: cp))
                Issue.record("a foreign checkpoint was continued", sourceLocation: sourceLocation)
            } catch let e as CheckpointError {
                guard case .doesNotMatch(let f, _) = e else { Issue.record("\(e)", sourceLocation: sourceLocation); return }
                #expect(f == ck.path, sourceLocation: sourceLocation)
            } catch {
                Issue.record("\(error)", sourceLocation: sourceLocation)
            }
        }
        let fresh = { try ContinualState.create(config: S.config(), encoder: try S.encoder(), generalTexts: S.general, modelPath: nil) }
        expectMismatch(try fresh(), S.domain("b", base: 6), c)  // another domain
        var changed = a
        changed.train[0].text = "w1 w2 w3"
        expectMismatch(try fresh(), changed, c)  // the domain's rows changed
        var cfg = S.config()
        cfg.methods[0].adapter.bottleneck = 6
        expectMismatch(try ContinualState.create(config: cfg, encoder: try S.encoder(), generalTexts: S.general, modelPath: nil), a, c)
        var later = c
        later.baseVersion = 3
        expectMismatch(try fresh(), a, later)  // written on top of another version
    }

    // MARK: - experiments: finished runs are kept and reused

    @Test func interruptedExperimentReusesFinishedRuns() throws {
        var cfg = S.config()
        cfg.methods = [MethodConfig(kind: .loraReplay), cfg.methods[0]]
        cfg.orderings = 2
        let scenario = try Scenario(domains: [S.domain("a", base: 0), S.domain("b", base: 6)])
        func runner() throws -> ExperimentRunner {
            ExperimentRunner(config: cfg, scenario: scenario, encoder: try S.encoder(), generalTexts: S.general, codeVersion: "test")
        }
        let reference = try runner().run()
        #expect(reference.runs.count == 4)

        // stopped during the third run (dual-replay, first ordering): two runs are saved
        let first = try runner()
        var saved: PartialResults? = nil
        var steps = 0
        first.onRunFinished = { saved = $0 }
        first.shouldStop = { steps == 36 }  // 16 steps per run (2 domains × 8)
        first.afterStep = { _ in steps += 1 }
        #expect(throws: RunnerError.self) { _ = try first.run() }
        let partial = try #require(saved)
        #expect(partial.runs.map(\.method) == ["lora-replay", "lora-replay"])
        // through JSON, as `run --resume` reads it
        let back = try JSONDecoder().decode(PartialResults.self, from: try JSONEncoder().encode(partial))

        let second = try runner()
        second.resumeFrom = back
        var log: [String] = []
        second.progress = { log.append($0) }
        let results = try second.run()
        #expect(log.filter { $0.contains("reused") }.count == 2)
        for (a, b) in zip(results.runs, reference.runs) {
            #expect(a.method == b.method && a.orderingSeed == b.orderingSeed)
            #expect(a.routed.f1.flatMap { $0 }.map(\.bitPattern) == b.routed.f1.flatMap { $0 }.map(\.bitPattern))
            #expect(a.oracle.f1.flatMap { $0 }.map(\.bitPattern) == b.oracle.f1.flatMap { $0 }.map(\.bitPattern))
        }
        // runs of another protocol are never mixed in
        var foreign = back
        foreign.protocolHash = "0000000000000000"
        let third = try runner()
        third.resumeFrom = foreign
        var log3: [String] = []
        third.progress = { log3.append($0) }
        _ = try third.run()
        #expect(!log3.contains { $0.contains("reused") })
    }

    /// `run --interim`: the finished runs of a partial file, summarised and paired as the whole
    /// experiment would be, the missing ones named; whatever protocol hash wrote them.
    @Test func interimSummarisesTheFinishedRunsOnly() throws {
        var cfg = S.config()
        cfg.methods = [MethodConfig(kind: .loraReplay), cfg.methods[0]]
        cfg.orderings = 2
        let scenario = try Scenario(domains: [S.domain("a", base: 0), S.domain("b", base: 6)])
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: try S.encoder(), generalTexts: S.general, codeVersion: "test")
        let full = try runner.run()
        let dual = full.summaries[1].method, seeds = cfg.resolvedOrderingSeeds
        // the second ordering of the second method is not finished
        var partial = PartialResults(protocolHash: "0123456789abcdef")
        partial.runs = full.runs.filter { !($0.method == dual && $0.orderingSeed == seeds[1]) }
        let r = try runner.interim(try JSONDecoder().decode(PartialResults.self, from: try JSONEncoder().encode(partial)))
        #expect(r.interim == InterimRuns(finished: 3, total: 4, missing: ["\(dual) seed \(seeds[1])"], partialProtocolHash: "0123456789abcdef"))
        #expect(r.runs.count == 3 && r.summaries.map(\.method) == full.summaries.map(\.method))
        // the finished method's summary is the whole experiment's; the other's is its one run
        #expect(r.summaries[0].routed.averageF1 == full.summaries[0].routed.averageF1)
        let only = try #require(full.runs.first { $0.method == dual && $0.orderingSeed == seeds[0] })
        #expect(r.summaries[1].routed.averageF1.mean == only.routed.averageF1 && r.summaries[1].routed.averageF1.count == 1)
        // the paired tests pair the orderings both methods finished
        let pairs = try #require(r.comparisons)
        #expect(!pairs.isEmpty && pairs.allSatisfy { $0.orderingSeeds == [seeds[0]] })
        #expect(full.comparisons?.allSatisfy { $0.orderingSeeds.count == 2 } == true)
        let md = ResultsReport.markdown(r)
        #expect(md.contains("Interim: 3 of 4 runs finished") && md.contains("\(dual) seed \(seeds[1])") && md.contains("another build"))
        #expect(ResultsReport.markdown(full).contains("Interim") == false)
        #expect(HTMLReport.page(results: r).contains("Interim: 3 of 4 runs finished"))
    }

    // MARK: - the real CLI, killed with SIGKILL

    static func binary() throws -> URL {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("dualreplay")
        if FileManager.default.isExecutableFile(atPath: beside.path) { return beside }
        return try TestPaths.require(TestPaths.packageRoot.appendingPathComponent(".build/debug/dualreplay"))
    }

    struct Exit { var status: Int32; var signaled: Bool; var stderr: String }

    static func run(_ args: [String], crashAt: String? = nil) throws -> Exit {
        let p = Process()
        p.executableURL = try binary()
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env[CrashInjection.environmentVariable] = crashAt
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Exit(status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal, stderr: String(decoding: data, as: UTF8.self))
    }

    /// Two small domains of real words for the real encoder, as JSONL files.
    static func writeDomains(_ root: URL, domains: Int = 2, intents: Int = 3, trainPerIntent: Int = 8) throws -> [String] {
        var cfg = SyntheticConfig(domains: domains, intentsPerDomain: intents, trainPerIntent: trainPerIntent, valPerIntent: 2,
                                  testPerIntent: 3, seed: 5)
        cfg.multiIntentTestPerDomain = 0
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return try SyntheticCorpus.make(config: cfg).enumerated().map { k, d in
            var data = Data()
            for r in d.train + d.val + d.test { data.append(try enc.encode(r)); data.append(0x0A) }
            let url = root.appendingPathComponent("domain\(k).jsonl")
            try data.write(to: url)
            return url.path
        }
    }

    /// An onboarding job of the real CLI in `root`: domain files, general text, a dual-replay
    /// config; returns the arguments of `onboard` for a state directory and checkpoint interval.
    static func onboardJob(_ root: URL, domains: Int, intents: Int, trainPerIntent: Int, generalCount: Int, epochs: Int, batch: Int,
                           bufferExamples: Int) throws -> (URL, Int, Bool) -> [String] {
        let model = try TestPaths.require(TestPaths.model.appendingPathComponent("model.safetensors")).deletingLastPathComponent()
        let files = try writeDomains(root, domains: domains, intents: intents, trainPerIntent: trainPerIntent)
        let general = root.appendingPathComponent("general.jsonl")
        try Data(SyntheticCorpus.generalText(count: generalCount, seed: 2).map { "{\"text\": \"\($0)\"}\n" }.joined().utf8).write(to: general)
        let config = root.appendingPathComponent("config.json")
        try Data("""
        {"name": "resume", "seed": 3, "latencySamples": 0, "data": {"synthetic": {"domains": \(domains)}},
         "training": {"epochs": \(epochs), "batchSize": \(batch), "learningRate": 0.002, "bufferExamples": \(bufferExamples)},
         "methods": [{"kind": "dual-replay", "adapter": {"bottleneck": 8, "layers": [4, 5]}}]}
        """.utf8).write(to: config)
        return { dir, every, resume in
            ["onboard", "--init", "--config", config.path, "--general", general.path, "--model", model.path, "--threads", "1",
             "--state", dir.path, "--checkpoint-every", "\(every)"] + files.flatMap { ["--domain", $0] } + (resume ? ["--resume"] : [])
        }
    }

    @Test func sigkillAtAnyMomentThenResumeEndsBitIdentical() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let job = try Self.onboardJob(root, domains: 2, intents: 3, trainPerIntent: 8, generalCount: 40, epochs: 2, batch: 8, bufferExamples: 12)
        func args(_ dir: URL, resume: Bool) -> [String] { job(dir, 2, resume) }
        let reference = root.appendingPathComponent("reference")
        let ok = try Self.run(args(reference, resume: false))
        try #require(ok.status == 0 && !ok.signaled, "\(ok.stderr)")
        let refFiles = try S.files(reference)
        let refMetrics = try JSONDecoder().decode([MetricsRow].self, from: refFiles["metrics.json"]!)
        #expect(refMetrics.count == 2)

        // each domain has 24 rows, 6 new per batch: 8 steps per domain
        for (n, crash) in ["step:3", "step:11", "rename:versions/", "rename:checkpoint", "interrupt:13"].enumerated() {
            let dir = root.appendingPathComponent("killed-\(n)")
            let killed = try Self.run(args(dir, resume: false), crashAt: crash)
            if crash.hasPrefix("interrupt") {
                // Ctrl-C: a checkpoint of the step it stopped at, exit status 130
                #expect(!killed.signaled && killed.status == 130 && killed.stderr.contains("--resume"), "\(crash): \(killed.stderr.suffix(400))")
                #expect(FileManager.default.fileExists(atPath: OnboardingCheckpoint.url(in: dir).path))
            } else {
                #expect(killed.signaled && killed.status == SIGKILL, "\(crash): \(killed.status) \(killed.stderr.suffix(400))")
            }
            // without --resume an interrupted onboarding is not silently restarted or duplicated
            if FileManager.default.fileExists(atPath: OnboardingCheckpoint.url(in: dir).path) {
                let again = try Self.run(args(dir, resume: false))
                #expect(again.status != 0 && (again.stderr.contains("--resume") || again.stderr.contains("already")), "\(crash): \(again.stderr)")
            }
            let resumed = try Self.run(args(dir, resume: true))
            try #require(resumed.status == 0 && !resumed.signaled, "\(crash): \(resumed.stderr)")
            // a kill after a checkpoint continues from it; a kill while publishing the first one starts over
            #expect(resumed.stderr.contains("resumed at step") == (crash != "rename:checkpoint"), "\(crash): \(resumed.stderr)")
            let got = try S.files(dir)
            #expect(got["params.safetensors"] == refFiles["params.safetensors"], "\(crash): parameters differ")
            #expect(got["buffer.json"] == refFiles["buffer.json"], "\(crash): buffer differs")
            let metrics = try JSONDecoder().decode([MetricsRow].self, from: got["metrics.json"]!)
            #expect(metrics.map(\.routedF1) == refMetrics.map(\.routedF1) && metrics.map(\.oracleF1) == refMetrics.map(\.oracleF1), "\(crash)")
            #expect(metrics.map(\.routerAccuracy) == refMetrics.map(\.routerAccuracy), "\(crash)")
            #expect(!FileManager.default.fileExists(atPath: OnboardingCheckpoint.url(in: dir).path), "\(crash): checkpoint left behind")
        }
    }

    /// Kills in the second and third domain at two checkpoint intervals, with batches large
    /// enough that several general-stream items are drawn per step: the general stream's frozen
    /// anchoring targets must not depend on which items an earlier step drew (they once were
    /// computed in batches of whatever was missing, so a resumed run differed in the last bits).
    @Test func sigkillInLaterDomainsAtSeveralIntervalsResumesBitIdentical() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let job = try Self.onboardJob(root, domains: 3, intents: 4, trainPerIntent: 20, generalCount: 300, epochs: 3, batch: 32, bufferExamples: 60)
        func args(_ dir: URL, every: Int, resume: Bool) -> [String] { job(dir, every, resume) }
        let reference = root.appendingPathComponent("reference")
        let ok = try Self.run(args(reference, every: 0, resume: false))
        try #require(ok.status == 0 && !ok.signaled, "\(ok.stderr)")
        let refFiles = try S.files(reference)
        // 80 rows, 26 new per batch: 12 steps per domain; domain 2 is steps 13-24, domain 3 is 25-36
        for (n, (every, step)) in [(3, 16), (4, 29), (5, 23)].enumerated() {
            let dir = root.appendingPathComponent("killed-\(n)")
            let killed = try Self.run(args(dir, every: every, resume: false), crashAt: "step:\(step)")
            #expect(killed.signaled && killed.status == SIGKILL, "step \(step): \(killed.status) \(killed.stderr.suffix(400))")
            let resumed = try Self.run(args(dir, every: every, resume: true))
            try #require(resumed.status == 0 && !resumed.signaled, "step \(step): \(resumed.stderr)")
            #expect(resumed.stderr.contains("resumed at step"), "step \(step): \(resumed.stderr)")
            let got = try S.files(dir)
            #expect(got["params.safetensors"] == refFiles["params.safetensors"], "every \(every), killed at step \(step): parameters differ")
            #expect(got["buffer.json"] == refFiles["buffer.json"], "every \(every), killed at step \(step): buffer differs")
            #expect(got["metrics.json"].map { try? JSONDecoder().decode([MetricsRow].self, from: $0).map(\.routedF1) }
                    == refFiles["metrics.json"].map { try? JSONDecoder().decode([MetricsRow].self, from: $0).map(\.routedF1) })
        }
    }
}
