// dr-bench — kernel and end-to-end benchmarks (`make bench`, release build).
// Every figure comes with its ceiling measured in the same run: OpenBLAS sgemm GFLOP/s on the
// same GEMM shapes. Results: JSON lines on stdout (also appended to --out PATH) and short tables.
//
//   dr-bench [--only encoder,train,kernels,fewrows,predict] [--threads 1,2] [--methods adapter,adapter-t16,lora,full]
//            [--seconds 2] [--batch 32] [--latency-runs 1000] [--model DIR] [--data DIR] [--out PATH]
//            [--reference build/bench/reference.jsonl]
import DualReplay
import Foundation

setvbuf(stdout, nil, _IOLBF, 0)
let options = BenchOptions.parse(Array(CommandLine.arguments.dropFirst()))
let reporter = Reporter(outPath: options.out)
// checked first, so that a stale or foreign reference is said before anything runs
let reference = options.reference.flatMap { loadReference($0) }
var encoderRecords: [BenchRecord] = []
var trainRecords: [TrainRecord] = []
var kernelRecords: [KernelRecord] = []
var predictRecords: [PredictRecord] = []
var fewRowsRecords: [FewRowsRecord] = []
if options.runs("encoder") { encoderRecords = try benchEncoder(options, reporter) }
if options.runs("train") { trainRecords = try benchTrainStep(options, reporter) }
if options.runs("kernels") { kernelRecords = try benchKernels(options, reporter) }
if options.runs("fewrows") { fewRowsRecords = benchFewRows(options, reporter) }
if options.runs("predict") { predictRecords = try benchPredict(options, reporter) }
if let reference { emitReferenceComparisons(reference, encoder: encoderRecords, train: trainRecords, reporter) }
if !encoderRecords.isEmpty { printEncoderTable(encoderRecords, reference: reference) }
if !trainRecords.isEmpty { printTrainTable(trainRecords, reference: reference) }
if !kernelRecords.isEmpty { printKernelTable(kernelRecords) }
if !fewRowsRecords.isEmpty { printFewRowsTable(fewRowsRecords) }
if !predictRecords.isEmpty { printPredictTable(predictRecords) }
