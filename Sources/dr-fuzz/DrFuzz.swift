// The plain (uninstrumented) build of dr-fuzz: writes the seed corpora and replays inputs through
// the same checks as the libFuzzer build, e.g. a crash artifact or a corpus after a parser change.
//
//   dr-fuzz seeds DIR                      seed corpora DIR/<target>/ and dictionaries DIR/<target>.dict
//   dr-fuzz replay TARGET PATH...          every file (or every file in a folder) through TARGET's checks
#if !DR_LIBFUZZER
import Foundation
#if canImport(Glibc)
import Glibc
#endif

@main
enum DrFuzz {
    static let usage = """
        usage: dr-fuzz seeds DIR
               dr-fuzz replay (safetensors|jsonl|tokenizer) PATH...
        Fuzzing itself needs the libFuzzer build: `make fuzz`.
        """

    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        switch (args.first, args.count) {
        case ("seeds", 2):
            do {
                let count = try Seeds.write(to: URL(fileURLWithPath: args[1]))
                print("dr-fuzz: wrote \(count) seeds to \(args[1])")
            } catch {
                fail("cannot write seeds: \(error.localizedDescription)")
            }
        case ("replay", 3...):
            guard let target = FuzzTarget(rawValue: args[1]) else { fail("unknown target '\(args[1])'\n\(usage)") }
            let files = args.dropFirst(2).flatMap(filesUnder)
            var accepted = 0
            for path in files {
                guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read \(path)") }
                if data.withUnsafeBytes({ target.check($0) }) { accepted += 1 }
            }
            print("dr-fuzz \(target.rawValue): \(files.count) inputs replayed (\(accepted) accepted), all properties hold")
        default:
            fail(usage)
        }
    }

    /// `path` itself, or the regular files directly inside it, sorted.
    static func filesUnder(_ path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { fail("no such file: \(path)") }
        guard isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.sorted().map { (path as NSString).appendingPathComponent($0) }.filter {
            var dir: ObjCBool = false
            return FileManager.default.fileExists(atPath: $0, isDirectory: &dir) && !dir.boolValue
        }
    }

    static func fail(_ message: String) -> Never {
        fputs("dr-fuzz: \(message)\n", stderr)
        exit(1)
    }
}
#endif
