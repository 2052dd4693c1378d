//go:build race

package conformance

// raceEnabled builds the binary under test with the race detector too when
// the tests themselves run with -race.
const raceEnabled = true
