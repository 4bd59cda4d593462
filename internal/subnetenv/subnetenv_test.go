package subnetenv

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var equatePrefixes = cmpopts.EquateComparable(netip.Prefix{})

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "flannel", "subnet.env")
	e := Env{
		Networks:     []netip.Prefix{netip.MustParsePrefix("10.5.0.0/16")},
		Subnet:       GatewayOf(netip.MustParsePrefix("10.5.52.0/24")),
		IPv6Networks: []netip.Prefix{netip.MustParsePrefix("fc00::/48")},
		IPv6Subnet:   GatewayOf(netip.MustParsePrefix("fc00:0:0:7::/64")),
		MTU:          1450,
		IPMasq:       true,
	}
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:7::1/64\n" +
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if string(data) != want {
		t.Errorf("file =\n%s\nwant\n%s", data, want)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(e, got, equatePrefixes); diff != "" {
		t.Errorf("Read (-want +got):\n%s", diff)
	}
	if LeasedSubnet(got.Subnet) != netip.MustParsePrefix("10.5.52.0/24") {
		t.Errorf("LeasedSubnet = %s", LeasedSubnet(got.Subnet))
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("directory has %d entries, want 1", len(ents))
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	for _, in := range []string{
		"FLANNEL_SUBNET=banana\n",
		"FLANNEL_MTU=-1\n",
		"FLANNEL_IPMASQ=perhaps\n",
		"FLANNEL_IPV6_SUBNET=10.0.0.1/24\n",
		"garbage line\n",
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q): want error", in)
		}
	}
	e, err := Parse([]byte("# comment\nFLANNEL_MTU=1400\nOTHER=1\n\nFLANNEL_IPMASQ=false\n"))
	if err != nil || e.MTU != 1400 {
		t.Errorf("Parse = %+v, %v", e, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	f.Add([]byte("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n"))
	f.Add([]byte(upstreamMultiNetwork))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			return
		}
		// What parses must survive a round trip through our own writer.
		again, err := Parse(e.Marshal())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", e.Marshal(), err)
		}
		if diff := cmp.Diff(e, again, equatePrefixes); diff != "" {
			t.Fatalf("round trip through %q changed (-before +after):\n%s", e.Marshal(), diff)
		}
	})
}
