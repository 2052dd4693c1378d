//go:build !race

package weldrtest

const raceEnabled = false
