//go:build !race

package weldrtest

const RaceEnabled = false
