package conformance

import (
	"os"
	"testing"

	"github.com/weldr-proxy/weldr/internal/weldrtest"
)

// weldrBin is the real binary, built once for the whole suite.
var weldrBin string

func TestMain(m *testing.M) { os.Exit(weldrtest.Main(m, &weldrBin)) }
