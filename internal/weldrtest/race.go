//go:build race

package weldrtest

// RaceEnabled reports a test binary built with the race detector: Main
// builds the binary under test with it too, and tests that count
// allocations skip (its instrumentation allocates).
const RaceEnabled = true
