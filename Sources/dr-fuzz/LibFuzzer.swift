// libFuzzer entry points, compiled when the Makefile builds with `-sanitize=fuzzer,address` and
// `-DDR_LIBFUZZER` (libFuzzer then supplies `main`). One binary serves every target:
//
//   DR_FUZZ_TARGET=safetensors|jsonl|tokenizer dr-fuzz [libFuzzer flags] CORPUS_DIR...
//   DR_FUZZ_WRITE_SEEDS=DIR dr-fuzz          writes the seed corpora and dictionaries, then exits
#if DR_LIBFUZZER
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The target named by DR_FUZZ_TARGET, read once.
private let selectedTarget: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["DR_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
        fputs("dr-fuzz: set DR_FUZZ_TARGET to one of \(names) (got '\(name)')\n", stderr)
        exit(2)
    }
    return target
}()

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?,
                           _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    if let dir = ProcessInfo.processInfo.environment["DR_FUZZ_WRITE_SEEDS"], !dir.isEmpty {
        do {
            let count = try Seeds.write(to: URL(fileURLWithPath: dir))
            print("dr-fuzz: wrote \(count) seeds to \(dir)")
            exit(0)
        } catch {
            fputs("dr-fuzz: cannot write seeds to \(dir): \(error.localizedDescription)\n", stderr)
            exit(1)
        }
    }
    // Fail before fuzzing, not on the first input: an unknown target or a missing vocabulary.
    if selectedTarget == .tokenizer { _ = fuzzTokenizers }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selectedTarget.check(UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size))
    return 0
}
#endif
