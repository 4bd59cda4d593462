package masq

import (
	"flag"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// golden compares got with testdata/<name>, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got; run with -update to accept):\n%s", path, diff)
	}
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

var (
	net4    = netip.MustParsePrefix("10.244.0.0/16")
	sub4    = netip.MustParsePrefix("10.244.1.0/24")
	sub4New = netip.MustParsePrefix("10.244.7.0/24")
	net6    = netip.MustParsePrefix("fd00:10:244::/56")
	sub6    = netip.MustParsePrefix("fd00:10:244:1::/64")
)

// goldenCases are the configurations whose rules are pinned in testdata.
var goldenCases = []struct {
	name string
	cfg  Config
}{
	{"v4", Config{Network: net4, Subnet: sub4, Masquerade: true, FullyRandom: true, Forward: true}},
	{"dualstack", Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPv6Subnet: sub6,
		Masquerade: true, FullyRandom: true, Forward: true}},
	{"v6only", Config{IPv6Network: net6, IPv6Subnet: sub6, Masquerade: true, FullyRandom: true, Forward: true}},
	{"no-fully-random", Config{Network: net4, Subnet: sub4, Masquerade: true, Forward: true}},
	{"no-forward", Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPv6Subnet: sub6,
		Masquerade: true, FullyRandom: true}},
	{"forward-only", Config{Network: net4, Subnet: sub4, Forward: true}},
}
