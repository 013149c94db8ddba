import Foundation
import Testing
@testable import DualReplay
#if canImport(Glibc)
import Glibc
#endif

/// The holes a hostile-input probe found, each pinned by a test: concurrent writers (the state
/// lock, with real processes), export into the state and rollback, predict's line protocol through
/// a pipe, model relocation, late write failures, unprintable domain names, orphaned temporaries,
/// forged manifests and non-finite parameters, and the messages of odd inputs.
@Suite struct ReliabilityTests {
    typealias S = StateTests

    // MARK: - running the real binary

    struct Run {
        var status: Int32
        var signaled: Bool
        var stdout: String
        var stderr: String
        var ok: Bool { status == 0 && !signaled }
    }

    /// The environment of a child: no DR_MODEL or DR_CRASH_AT unless given.
    static func environment(_ overrides: [String: String]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["DR_MODEL"] = nil
        env[CrashInjection.environmentVariable] = nil
        for (k, v) in overrides { env[k] = v }
        return env
    }

    /// Starts the binary with stdout and stderr going to files in `logs` (read them after exit).
    static func start(_ args: [String], logs: URL, cwd: URL? = nil, env: [String: String] = [:]) throws -> (Process, out: URL, err: URL) {
        let p = Process()
        p.executableURL = try ResumeTests.binary()
        p.arguments = args
        p.environment = environment(env)
        if let cwd { p.currentDirectoryURL = cwd }
        let (out, err) = try launch(p, logs: logs)
        return (p, out, err)
    }

    /// Runs a configured process with stdout and stderr going to fresh files in `logs` and no
    /// stdin; returns the two files (read them after exit).
    static func launch(_ p: Process, logs: URL) throws -> (out: URL, err: URL) {
        let tag = UUID().uuidString
        let out = logs.appendingPathComponent("out-\(tag)"), err = logs.appendingPathComponent("err-\(tag)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return (out, err)
    }

    static func finish(_ started: (Process, out: URL, err: URL)) throws -> Run {
        started.0.waitUntilExit()
        return Run(status: started.0.terminationStatus, signaled: started.0.terminationReason == .uncaughtSignal,
                   stdout: String(decoding: try Data(contentsOf: started.out), as: UTF8.self),
                   stderr: String(decoding: try Data(contentsOf: started.err), as: UTF8.self))
    }

    static func run(_ args: [String], logs: URL, cwd: URL? = nil, env: [String: String] = [:]) throws -> Run {
        try finish(try start(args, logs: logs, cwd: cwd, env: env))
    }

    /// The real model's directory (a missing model is a failure, not a skip).
    static func model() throws -> URL {
        try TestPaths.require(TestPaths.model.appendingPathComponent("model.safetensors")).deletingLastPathComponent()
    }

    /// Two small real-word domains, a general file and a small config (as the resume tests use).
    struct Material: Sendable {
        var root: URL
        var domains: [String]
        var names: [String]
        var config: URL
        var general: URL

        init() throws {
            root = try TestPaths.tempDir()
            domains = try ResumeTests.writeDomains(root)
            names = try domains.map { try ContinualState.loadDomain(URL(fileURLWithPath: $0)).name }
            general = root.appendingPathComponent("general.jsonl")
            try Data(SyntheticCorpus.generalText(count: 40, seed: 2).map { "{\"text\": \"\($0)\"}\n" }.joined().utf8).write(to: general)
            config = root.appendingPathComponent("config.json")
            try Data("""
            {"name": "reliability", "seed": 3, "latencySamples": 0, "data": {"synthetic": {"domains": 2}},
             "training": {"epochs": 2, "batchSize": 8, "learningRate": 0.002, "bufferExamples": 12},
             "methods": [{"kind": "dual-replay", "adapter": {"bottleneck": 8, "layers": [4, 5]}}]}
            """.utf8).write(to: config)
        }

        func initArgs(_ dir: URL, domain k: Int, model: String) -> [String] {
            ["onboard", "--init", "--config", config.path, "--general", general.path, "--model", model, "--threads", "1",
             "--state", dir.path, "--checkpoint-every", "2", "--domain", domains[k]]
        }
    }

    /// The state of pid `pid` in /proc (R running, S sleeping, T stopped, ...).
    static func processState(_ pid: Int32) -> Character? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = s.lastIndex(of: ")") else { return nil }
        return s[s.index(close, offsetBy: 2)...].first
    }

    static func waitUntilStopped(_ p: Process, seconds: Double = 300) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if !p.isRunning { return false }
            if processState(p.processIdentifier) == "T" { return true }
            usleep(20_000)
        }
        return false
    }

    // MARK: - 1. one writer at a time (real processes)

    @Test func secondWriterIsRefusedWhileTheFirstRuns() throws {
        let m = try Material()
        defer { try? FileManager.default.removeItem(at: m.root) }
        let dir = m.root.appendingPathComponent("c"), model = try Self.model().path
        // the first run freezes itself after its first step, alive and holding the lock
        let first = try Self.start(m.initArgs(dir, domain: 0, model: model), logs: m.root, env: [CrashInjection.environmentVariable: "stop:1"])
        let pid = first.0.processIdentifier
        defer { if first.0.isRunning { kill(pid, SIGKILL) } }
        try #require(Self.waitUntilStopped(first.0), "the first run did not reach its first step")

        let host = StateLock.hostName
        for args in [m.initArgs(dir, domain: 1, model: model),  // a second --init
                     ["onboard", "--state", dir.path, "--model", model, "--domain", m.domains[1]],  // a plain onboard
                     ["onboard", "--state", dir.path, "--model", model, "--domain", m.domains[0], "--resume"]] {  // "told to --resume"
            let second = try Self.run(args, logs: m.root)
            #expect(!second.ok, "a second writer ran: \(second.stderr)")
            #expect(second.stderr.contains("pid \(pid)") && second.stderr.contains("host \(host)"), "\(second.stderr)")
            #expect(!second.stderr.contains("--resume to continue"), "\(second.stderr)")
        }
        kill(pid, SIGCONT)
        let done = try Self.finish(first)
        try #require(done.ok, "\(done.stderr)")
        let state = try StateDirectory.load(dir)
        #expect(state.manifest.domains.map(\.name) == [m.names[0]])
        #expect(StateDirectory.savedVersionNumbers(dir) == [1])
        #expect(!FileManager.default.fileExists(atPath: OnboardingCheckpoint.url(in: dir).path))
        // a clean exit leaves the lock file empty: the next run takes no one's lock over
        #expect(try Data(contentsOf: StateLock.url(in: dir)).isEmpty)
    }

    /// 1 and 11: a writer killed (SIGKILL while publishing its checkpoint) leaves its lock and a
    /// temporary file; the next run takes the lock over, removes the orphan and finishes.
    @Test func killedHoldersLockIsTakenOverAndItsTemporariesRemoved() throws {
        let m = try Material()
        defer { try? FileManager.default.removeItem(at: m.root) }
        let dir = m.root.appendingPathComponent("c"), model = try Self.model().path
        let killed = try Self.run(m.initArgs(dir, domain: 0, model: model), logs: m.root,
                                  env: [CrashInjection.environmentVariable: "rename:checkpoint"])
        #expect(killed.signaled && killed.status == SIGKILL, "\(killed.stderr.suffix(300))")
        let holder = try JSONDecoder().decode(StateLock.Holder.self, from: Data(contentsOf: StateLock.url(in: dir)))
        #expect(holder.verb == "onboard --init" && holder.host == StateLock.hostName)
        let orphans = { (try FileManager.default.contentsOfDirectory(atPath: dir.path)).filter { $0.hasPrefix(".checkpoint.safetensors.tmp-") } }
        #expect(try orphans().count == 1)

        let next = try Self.run(m.initArgs(dir, domain: 0, model: model) + ["--resume"], logs: m.root)
        try #require(next.ok, "\(next.stderr)")
        #expect(next.stderr.contains("took over the state lock of pid \(holder.pid)"), "\(next.stderr)")
        #expect(next.stderr.contains("removed") && next.stderr.contains(".checkpoint.safetensors.tmp-"), "\(next.stderr)")
        #expect(try orphans().isEmpty)
        #expect(try StateDirectory.load(dir).manifest.domains.map(\.name) == [m.names[0]])
    }

    @Test func lockIsExclusiveAndNamesItsHolder() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = try StateLock.acquire(dir, verb: "onboard", create: false)
        // flock is per open file: a second acquisition, even in this process, is refused
        #expect(throws: StateLockError.held(directory: dir.path, holder: StateLock.Holder(pid: getpid(), host: StateLock.hostName,
                                                                                          started: try Self.holder(dir).started, verb: "onboard"))) {
            _ = try StateLock.acquire(dir, verb: "rollback", create: false)
        }
        a.release()
        let b = try StateLock.acquire(dir, verb: "rollback", create: false)
        #expect(b.previous == nil)  // released cleanly: nothing to take over
        b.release()
        #expect(throws: StateError.notFound(path: dir.appendingPathComponent("missing").path)) {
            _ = try StateLock.acquire(dir.appendingPathComponent("missing"), verb: "onboard", create: false)
        }
    }

    static func holder(_ dir: URL) throws -> StateLock.Holder {
        try JSONDecoder().decode(StateLock.Holder.self, from: Data(contentsOf: StateLock.url(in: dir)))
    }

    // MARK: - 3. export cannot touch the state; rollback

    @Test func exportIntoTheStateIsRefused() throws {
        let (dir, _) = try S.savedState()
        let root = dir.deletingLastPathComponent()
        defer { try? FileManager.default.removeItem(at: root) }
        let params = try StateDirectory.currentVersion(dir).appendingPathComponent(StateDirectory.paramsName)
        let before = try Data(contentsOf: params)
        let link = root.appendingPathComponent("link")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: dir)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("other"), withIntermediateDirectories: true)
        for out in [params.path, "\(dir.path)/x.safetensors", "\(link.path)/current/params.safetensors",
                    "\(root.path)/other/../state/versions/000002/params.safetensors", "\(dir.path)/new/sub/x.safetensors"] {
            let r = try Self.run(["export", "--state", dir.path, "--out", out], logs: root)
            #expect(!r.ok && r.stderr.contains("inside the state directory"), "\(out): \(r.stderr)")
        }
        #expect(try Data(contentsOf: params) == before)
        #expect(StateDirectory.contains(dir, params) && !StateDirectory.contains(dir, root.appendingPathComponent("other/x.safetensors")))
        #expect(!StateDirectory.contains(dir, root.appendingPathComponent("state-2/x.safetensors")))  // a prefix is not inside
    }

    @Test func rollbackMakesAnEarlierVersionCurrentAndDeletesNothing() throws {
        let (dir, _) = try S.savedState()
        let root = dir.deletingLastPathComponent()
        defer { try? FileManager.default.removeItem(at: root) }
        let list = try Self.run(["state", "--state", dir.path, "--list"], logs: root)
        try #require(list.ok, "\(list.stderr)")
        let lines = list.stdout.split(separator: "\n")
        #expect(lines.count == 2 && lines[0].contains("1 domain: a") && lines[1].contains("current") && lines[1].contains("a, b"), "\(list.stdout)")

        let back = try Self.run(["rollback", "--state", dir.path, "--to", "1"], logs: root)
        try #require(back.ok, "\(back.stderr)")
        #expect(try StateDirectory.load(dir).manifest.domains.map(\.name) == ["a"])
        #expect(StateDirectory.savedVersionNumbers(dir) == [1, 2])
        // the next onboarding builds on version 1 and saves under a new number; 2 stays
        let s = try ContinualState.open(dir, encoder: try S.encoder())
        let diff = try s.onboard(S.domain("c", base: 12))
        #expect(diff.fromVersion == 1)
        #expect(try s.save(to: dir) == 3)
        #expect(try StateDirectory.load(dir).metrics.last?.version == 3)
        #expect(StateDirectory.savedVersionNumbers(dir) == [1, 2, 3])
        let forward = try Self.run(["rollback", "--state", dir.path, "--to", "2"], logs: root)
        #expect(forward.ok, "\(forward.stderr)")
        #expect(try StateDirectory.load(dir).manifest.domains.map(\.name) == ["a", "b"])

        let missing = try Self.run(["rollback", "--state", dir.path, "--to", "7"], logs: root)
        #expect(!missing.ok && missing.stderr.contains("no saved version 7") && missing.stderr.contains("1, 2, 3"), "\(missing.stderr)")
        // a damaged version is refused before the link moves
        let v1 = dir.appendingPathComponent("versions/000001/\(StateDirectory.metricsName)")
        try Data("[]".utf8).write(to: v1)
        let damaged = try Self.run(["rollback", "--state", dir.path, "--to", "1"], logs: root)
        #expect(!damaged.ok && damaged.stderr.contains(v1.path), "\(damaged.stderr)")
        #expect(try StateDirectory.load(dir).manifest.version == 2)
        // refused while an onboarding is pending
        try Data("x".utf8).write(to: OnboardingCheckpoint.url(in: dir))
        let pending = try Self.run(["rollback", "--state", dir.path, "--to", "3"], logs: root)
        #expect(!pending.ok && pending.stderr.contains("interrupted onboarding"), "\(pending.stderr)")
    }

    // MARK: - 5 and 6. predict through a pipe, from another directory

    /// One real state for the predict tests, created in the model's parent directory with a
    /// relative --model (which used to be recorded as given, so other directories could not open it).
    static let realState: Result<(material: Material, dir: URL), Error> = Result {
        let m = try Material()
        let model = try ReliabilityTests.model()
        let dir = m.root.appendingPathComponent("state")
        var args = m.initArgs(dir, domain: 0, model: model.lastPathComponent)
        args += ["--domain", m.domains[1]]
        let r = try ReliabilityTests.run(args, logs: m.root, cwd: model.deletingLastPathComponent())
        guard r.ok else { throw StateError.malformed(file: dir.path, reason: "onboard failed: \(r.stderr)") }
        return (m, dir)
    }

    /// Reads from `fd` until `count` lines arrived (or `seconds` passed).
    static func readLines(_ fd: Int32, count: Int, into buffer: inout [UInt8], seconds: Double = 120) -> [String] {
        let deadline = Date().addingTimeInterval(seconds)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while buffer.filter({ $0 == 0x0A }).count < count, Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            buffer.append(contentsOf: chunk[0..<n])
        }
        var lines: [String] = []
        while lines.count < count, let nl = buffer.firstIndex(of: 0x0A) {
            lines.append(String(decoding: buffer[..<nl], as: UTF8.self))
            buffer.removeFirst(nl + 1)
        }
        return lines
    }

    @Test func predictAnswersEveryLineInOrderAsItArrives() throws {
        let (m, dir) = try Self.realState.get()
        let elsewhere = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: elsewhere) }
        let p = Process()
        p.executableURL = try ResumeTests.binary()
        p.arguments = ["predict", "--state", dir.path]
        p.environment = Self.environment([:])
        p.currentDirectoryURL = elsewhere  // 6: not where the state was created
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        let err = elsewhere.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        let text = try ContinualState.loadDomain(URL(fileURLWithPath: m.domains[0])).test[0].text
        // the first lines are answered while stdin stays open
        input.fileHandleForWriting.write(Data("\(text)\n{\"text\": \"\(text)\"}\n   \n".utf8))
        var buffer: [UInt8] = []
        let early = Self.readLines(output.fileHandleForReading.fileDescriptor, count: 3, into: &buffer)
        #expect(early.count == 3, "no answer before EOF: \(early); \(String(decoding: (try? Data(contentsOf: err)) ?? Data(), as: UTF8.self))")
        input.fileHandleForWriting.write(Data("{not json, a plain utterance\n{\"intent\": \"x\"}\n".utf8))
        input.fileHandleForWriting.write(Data([0xFF, 0xFE, 0x0A]))
        input.fileHandleForWriting.write(Data("[1, 2]\n\n{\"text\": 5}\nlast line without a newline".utf8))
        try input.fileHandleForWriting.close()
        let late = Self.readLines(output.fileHandleForReading.fileDescriptor, count: 100, into: &buffer)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "\(String(decoding: (try? Data(contentsOf: err)) ?? Data(), as: UTF8.self))")
        let answers = try (early + late).map { try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        try #require(answers.count == 10, "\(early + late)")
        #expect(answers.map { $0["line"] as? Int } == Array(1...10))
        let errors = answers.map { $0["error"] as? String }
        #expect(errors[2] == "empty line" && errors[7] == "empty line")
        #expect(errors[4]?.contains("\"text\"") == true && errors[8]?.contains("\"text\"") == true)
        #expect(errors[5] == "not valid UTF-8")
        for i in [0, 1, 3, 6, 9] { #expect(errors[i] == nil && answers[i]["intent"] is String, "line \(i + 1): \(answers[i])") }
        #expect(answers[0]["text"] as? String == text && answers[1]["text"] as? String == text)
        #expect(answers[3]["text"] as? String == "{not json, a plain utterance")
        #expect(answers[9]["text"] as? String == "last line without a newline")
        #expect(answers[0]["intent"] as? String == answers[1]["intent"] as? String)
    }

    @Test func movedModelIsFoundThroughModelOrDRModelAndMustMatch() throws {
        let (_, original) = try Self.realState.get()
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let model = try Self.model()
        // the state records an absolute path
        let recorded = try StateDirectory.load(original).manifest.baseModel.path
        #expect(recorded.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path } == model.resolvingSymlinksInPath().path, "\(recorded ?? "nil")")
        #expect(recorded?.hasPrefix("/") == true)

        // a copy of the state whose recorded model has gone away
        let dir = root.appendingPathComponent("state")
        try FileManager.default.copyItem(at: original, to: dir)
        let manifestURL = try StateDirectory.currentVersion(dir).appendingPathComponent(StateDirectory.manifestName)
        var manifest = try StateDirectory.readManifest(manifestURL)
        manifest.baseModel.path = root.appendingPathComponent("moved-away/model").path
        try StateDirectory.manifestBytes(manifest).write(to: manifestURL)
        let input = root.appendingPathComponent("in.txt")
        try Data("hello there\n".utf8).write(to: input)

        let gone = try Self.run(["predict", "--state", dir.path], logs: root)
        #expect(!gone.ok && gone.stderr.contains("moved-away/model") && gone.stderr.contains("DR_MODEL"), "\(gone.stderr)")
        // stdin is /dev/null: no lines, no answers, exit 0 once the state opened
        let viaEnv = try Self.run(["predict", "--state", dir.path], logs: root, env: ["DR_MODEL": model.path])
        #expect(viaEnv.ok && viaEnv.stdout.isEmpty, "\(viaEnv.stderr)")
        let viaFlag = try Self.run(["predict", "--state", dir.path, "--model", model.path], logs: root)
        #expect(viaFlag.ok, "\(viaFlag.stderr)")

        // another model (one weight changed): refused, naming both paths
        let other = root.appendingPathComponent("other-model")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        for f in ["config.json", "vocab.txt"] {
            try FileManager.default.createSymbolicLink(at: other.appendingPathComponent(f), withDestinationURL: model.appendingPathComponent(f))
        }
        var weights = try Data(contentsOf: model.appendingPathComponent("model.safetensors"))
        weights[weights.count / 2 & ~3] ^= 0x01  // the lowest mantissa bit of a float in an encoder layer
        try weights.write(to: other.appendingPathComponent("model.safetensors"))
        let wrong = try Self.run(["predict", "--state", dir.path, "--model", other.path], logs: root)
        #expect(!wrong.ok && wrong.stderr.contains(other.path) && wrong.stderr.contains("moved-away/model"), "\(wrong.stderr)")
    }

    // MARK: - 9. a state that cannot be written fails before training, naming the path

    @Test func unwritableStateFailsBeforeTrainingNamingThePath() throws {
        let m = try Material()
        defer { try? FileManager.default.removeItem(at: m.root) }
        let file = m.root.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: file)
        let model = try Self.model().path
        for (state, expected) in [(file.path, "not a directory"), (file.path + "/sub", "not a directory"),
                                  ("/proc/self/new-state", "cannot create the directory")] {
            let t0 = Date()
            let r = try Self.run(m.initArgs(URL(fileURLWithPath: state), domain: 0, model: model), logs: m.root)
            #expect(!r.ok && r.stderr.contains(state) && r.stderr.contains(expected), "\(state): \(r.stderr)")
            #expect(!r.stderr.contains("NSCocoaErrorDomain") && !r.stderr.contains("step"), "\(state): \(r.stderr)")
            #expect(Date().timeIntervalSince(t0) < 20, "\(state): failed late")
        }
        // a directory nobody may create files in: procfs refuses even root. chmod 0555 stops only
        // non-root users, so it is tried too when the tests do not run as root.
        #expect(throws: StateError.self) { try StateDirectory.checkWritable(URL(fileURLWithPath: "/proc/self")) }
        do {
            try StateDirectory.checkWritable(URL(fileURLWithPath: "/proc/self"))
        } catch {
            #expect(error.localizedDescription.contains("/proc/self: cannot write the state here"), "\(error.localizedDescription)")
        }
        if geteuid() != 0 {
            let ro = m.root.appendingPathComponent("read-only")
            try FileManager.default.createDirectory(at: ro, withIntermediateDirectories: true)
            chmod(ro.path, 0o555)
            defer { chmod(ro.path, 0o755) }
            #expect(throws: StateError.self) { try StateDirectory.checkWritable(ro) }
        }
        // Foundation-free messages from the directory helpers
        #expect(throws: StateError.notADirectory(path: file.path)) { try StateDirectory.makeDirectory(file) }
    }

    // MARK: - 10. domain names that would not print as themselves

    @Test func unprintableDomainNamesAreRefusedAndEscaped() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let good = "{\"text\": \"w1 w2\", \"intent\": \"i\", \"domain\": \"ok\", \"split\": \"train\"}\n"
        for (name, json) in [("escape", "\\u001b[31mred"), ("newline", "a\\nb"), ("bidi", "abc\\u202Edef"), ("empty", ""),
                             ("blank", "  "), ("c1", "x\\u0085"), ("isolate", "\\u2067x")] {
            let url = root.appendingPathComponent("\(name).jsonl")
            try Data((good + "{\"text\": \"w1\", \"intent\": \"j\", \"domain\": \"\(json)\", \"split\": \"train\"}\n").utf8).write(to: url)
            do {
                _ = try IntentDataset.load(jsonl: url)
                Issue.record("domain name \(name) was accepted")
            } catch let e as DataError {
                guard case .invalidDomainName(let f, let line, _, _) = e else { Issue.record("\(name): \(e)"); continue }
                #expect(f == url.path && line == 2, "\(name)")
                let msg = e.localizedDescription
                #expect(msg.contains("\(url.path):2") && !msg.unicodeScalars.contains(where: DisplayText.isUnsafe), "\(name): \(msg)")
            }
        }
        #expect(DisplayText.escaped("a\u{1B}[2J\nb\u{202E}c\\") == "a\\u{1B}[2J\\u{A}b\\u{202E}c\\\\")
        #expect(DisplayText.escaped("banking/ünïcode 東京") == "banking/ünïcode 東京")
        #expect(DisplayText.nameProblem("travel") == nil && DisplayText.nameProblem("clinc/banking") == nil)

        // the CLI prints the file and line, escaped, and stops before loading a model
        let bidi = root.appendingPathComponent("bidi.jsonl")
        let r = try Self.run(["onboard", "--init", "--method", "dual-replay", "--state", root.appendingPathComponent("s").path,
                              "--domain", bidi.path], logs: root)
        #expect(!r.ok && r.stderr.contains("\(bidi.path):2") && r.stderr.contains("\\u{202E}") && !r.stderr.contains("\u{202E}"), "\(r.stderr)")

        // a state whose manifest holds such a name (written by an older build) is refused on load
        let (dir, _) = try S.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let url = try StateDirectory.currentVersion(dir).appendingPathComponent(StateDirectory.manifestName)
        var manifest = try StateDirectory.readManifest(url)
        manifest.domains[0].name = "a\u{1B}[2J"
        try StateDirectory.manifestBytes(manifest).write(to: url)
        S.expectLoadFails(dir, naming: StateDirectory.manifestName, "\\u{1B}")
    }

    // MARK: - 11. orphaned temporaries

    @Test func staleTemporariesAreRemovedUnderTheLock() throws {
        let (dir, _) = try S.savedState()
        let root = dir.deletingLastPathComponent()
        defer { try? FileManager.default.removeItem(at: root) }
        let fm = FileManager.default
        let junk = [dir.appendingPathComponent(".checkpoint.safetensors.tmp-999999-12345"),
                    dir.appendingPathComponent(".current-999999"),
                    dir.appendingPathComponent("versions/.tmp-000003-999999")]
        try Data("x".utf8).write(to: junk[0])
        try Data("x".utf8).write(to: junk[1])
        try fm.createDirectory(at: junk[2].appendingPathComponent("domains"), withIntermediateDirectories: true)
        let keep = dir.appendingPathComponent(".hidden-user-file")
        try Data("x".utf8).write(to: keep)
        let r = try Self.run(["rollback", "--state", dir.path, "--to", "2"], logs: root)
        #expect(r.ok, "\(r.stderr)")
        for j in junk { #expect(!fm.fileExists(atPath: j.path), "\(j.lastPathComponent) left") }
        #expect(fm.fileExists(atPath: keep.path))
        #expect(try StateDirectory.load(dir).manifest.version == 2)
    }

    // MARK: - 12. forged or broken manifests and parameters

    /// Rewrites the current state.json with `change` applied and a consistent checksum.
    static func forge(_ dir: URL, _ change: (inout StateManifest) -> Void) throws {
        let url = try StateDirectory.currentVersion(dir).appendingPathComponent(StateDirectory.manifestName)
        var m = try StateDirectory.readManifest(url)
        change(&m)
        try StateDirectory.manifestBytes(m).write(to: url)
    }

    @Test func forgedVersionIsRefusedAndSavesNothing() throws {
        let (dir, s) = try S.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        try Self.forge(dir) { $0.version = 999_999_999 }
        S.expectLoadFails(dir, naming: StateDirectory.manifestName, "does not match its directory")
        try Self.forge(dir) { $0.version = 1 }  // another version's number
        S.expectLoadFails(dir, naming: StateDirectory.manifestName, "does not match its directory")
        // an in-memory state with an absurd version cannot save past the six-digit names either
        var snap = s.snapshot()
        snap.manifest.version = 999_999_999
        #expect(throws: StateError.self) { try StateDirectory.save(snap, to: dir) }
        #expect(StateDirectory.savedVersionNumbers(dir) == [1, 2])
    }

    @Test func byteBudgetMustMatchTheBuffer() throws {
        let (dir, _) = try S.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        try Self.forge(dir) { $0.byteBudget += 1000 }
        S.expectLoadFails(dir, naming: StateDirectory.bufferName, "byte budget")
    }

    @Test func nonFiniteParametersAreRefusedNamingTheTensor() throws {
        let (dir, s) = try S.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        var snap = s.snapshot()
        let t = snap.manifest.tensors[1]
        snap.values[t.offset + 2] = .nan
        // a save refuses it (the current version stays)
        do {
            try StateDirectory.save(snap, to: dir)
            Issue.record("a NaN parameter was saved")
        } catch {
            #expect(error.localizedDescription.contains("param/\(t.name)") && error.localizedDescription.contains("nan"), "\(error)")
        }
        #expect(StateDirectory.savedVersionNumbers(dir) == [1, 2])
        // a file with one, consistently checksummed, is refused on load
        let vdir = try StateDirectory.currentVersion(dir)
        let bytes = try StateDirectory.paramsFile(snap)
        try bytes.write(to: vdir.appendingPathComponent(StateDirectory.paramsName))
        try Self.forge(dir) { m in
            let i = m.files.firstIndex { $0.path == StateDirectory.paramsName }!
            m.files[i].bytes = bytes.count
            m.files[i].fnv1a64 = StateDirectory.fnv1a64(bytes)
        }
        S.expectLoadFails(dir, naming: "param/\(t.name)", "element 2 is nan")
    }

    // MARK: - 13. messages for odd inputs

    @Test func devicesPipesAndOversizedFilesAreReadOrRefusedClearly() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        // /dev/zero: an endless line, refused at once (it used to say "You don't have permission")
        do {
            _ = try IntentDataset.load(jsonl: URL(fileURLWithPath: "/dev/zero"))
            Issue.record("/dev/zero loaded")
        } catch {
            let msg = error.localizedDescription
            #expect(msg.contains("/dev/zero") && msg.contains("over the limit") && !msg.contains("permission"), "\(msg)")
        }
        // a FIFO (what a process substitution is) is read like a file
        let rows = S.domain("piped", base: 0)
        let enc = JSONEncoder()
        var data = Data()
        for r in rows.train + rows.val + rows.test { data.append(try enc.encode(r)); data.append(0x0A) }
        let bytes = data
        let fifo = root.appendingPathComponent("fifo")
        try #require(mkfifo(fifo.path, 0o600) == 0)
        let writer = Thread {
            if let h = FileHandle(forWritingAtPath: fifo.path) { h.write(bytes); try? h.close() }
        }
        writer.start()
        let ds = try IntentDataset.load(jsonl: fifo)
        #expect(ds.domains.map(\.name) == ["piped"] && ds.domains[0].train.count == rows.train.count)
        // above the size limit: a regular file by its size, a stream by what it delivered
        let file = root.appendingPathComponent("big.jsonl")
        try data.write(to: file)
        #expect(throws: DataError.fileTooLarge(file: file.path, bytes: data.count, limit: 100)) {
            _ = try JSONLReader.rows(of: file, maxLineBytes: 1 << 20, maxFileBytes: 100)
        }
        let fifo2 = root.appendingPathComponent("fifo2")
        try #require(mkfifo(fifo2.path, 0o600) == 0)
        let writer2 = Thread {
            if let h = FileHandle(forWritingAtPath: fifo2.path) { try? h.write(contentsOf: bytes); try? h.close() }
        }
        writer2.start()
        #expect(throws: DataError.fileTooLarge(file: fifo2.path, bytes: -1, limit: 100)) {
            _ = try JSONLReader.rows(of: fifo2, maxLineBytes: 1 << 20, maxFileBytes: 100)
        }
        #expect(DataError.fileTooLarge(file: "f", bytes: -1, limit: 100).localizedDescription.contains("more than 100 bytes"))
    }

    @Test func outOfScopeDomainSaysWhyAndHowToKeepIt() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let url = root.appendingPathComponent("oos.jsonl")
        var text = ""
        for split in ["train", "val", "test"] { text += "{\"text\": \"w1 w2\", \"intent\": \"oos\", \"domain\": \"oos\", \"split\": \"\(split)\"}\n" }
        try Data(text.utf8).write(to: url)
        #expect(throws: DataError.allExcluded(file: url.path, domains: ["oos"], rows: 3)) { _ = try IntentDataset.load(jsonl: url) }
        let msg = DataError.allExcluded(file: url.path, domains: ["oos"], rows: 3).localizedDescription
        #expect(msg.contains("out-of-scope") && msg.contains("rename"), "\(msg)")
    }

    @Test func onboardArgumentAndFileMessages() throws {
        let root = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: root) }
        let state = root.appendingPathComponent("s").path
        let files = try ResumeTests.writeDomains(root)
        func onboard(_ extra: [String]) throws -> Run {
            try Self.run(["onboard", "--state", state] + extra, logs: root)
        }
        let negative = try onboard(["--domain", files[0], "--checkpoint-every", "-1"])
        #expect(!negative.ok && negative.stderr.contains("--checkpoint-every must be >= 0") && !negative.stderr.contains("Missing value"),
                "\(negative.stderr)")
        for method in ["joint", "single"] {
            let r = try onboard(["--init", "--method", method, "--domain", files[0]])
            #expect(!r.ok && r.stderr.contains("method \(method) cannot onboard") && r.stderr.contains("dual-replay"), "\(r.stderr)")
        }
        let config = root.appendingPathComponent("joint.json")
        try Data(#"{"name": "j", "data": {"synthetic": {"domains": 2}}, "methods": [{"kind": "joint"}]}"#.utf8).write(to: config)
        let viaConfig = try onboard(["--init", "--config", config.path, "--domain", files[0], "--model", try Self.model().path])
        #expect(!viaConfig.ok && viaConfig.stderr.contains("method joint cannot onboard"), "\(viaConfig.stderr)")

        // two domains sharing a label in one file: onboard says what it can do (it has no allowSharedLabels)
        let shared = root.appendingPathComponent("shared.jsonl")
        var text = ""
        for d in ["alpha", "beta"] {
            for split in ["train", "val", "test"] { text += "{\"text\": \"w1\", \"intent\": \"cancel\", \"domain\": \"\(d)\", \"split\": \"\(split)\"}\n" }
        }
        try Data(text.utf8).write(to: shared)
        let r = try onboard(["--init", "--method", "dual-replay", "--domain", shared.path])
        #expect(!r.ok && r.stderr.contains("one file per domain") && r.stderr.contains("\(shared.path):4"), "\(r.stderr)")
        #expect(!r.stderr.contains("or set allowSharedLabels"), "\(r.stderr)")
        // an oos-only file through the CLI
        let oos = root.appendingPathComponent("oos.jsonl")
        try Data(text.replacingOccurrences(of: "\"alpha\"", with: "\"oos\"").replacingOccurrences(of: "\"beta\"", with: "\"oos\"").utf8).write(to: oos)
        let o = try onboard(["--init", "--method", "dual-replay", "--domain", oos.path])
        #expect(!o.ok && o.stderr.contains("out-of-scope") && !o.stderr.contains("all 6 lines were excluded"), "\(o.stderr)")
        let zero = try onboard(["--init", "--method", "dual-replay", "--domain", "/dev/zero"])
        #expect(!zero.ok && zero.stderr.contains("/dev/zero") && !zero.stderr.contains("permission"), "\(zero.stderr)")
    }
}
