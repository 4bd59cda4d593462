package config

import (
	"errors"
	"flag"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseOptionsDefaults(t *testing.T) {
	o, err := ParseOptions(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(o.EtcdEndpoints); got != 2 || o.EtcdEndpoints[1] != "http://127.0.0.1:2379" {
		t.Errorf("EtcdEndpoints = %v", o.EtcdEndpoints)
	}
	if o.EtcdPrefix != "/coreos.com/network" || o.SubnetFile != "/run/flannel/subnet.env" ||
		o.SubnetLeaseRenewMargin != time.Hour || o.IPTablesResync != 5*time.Second ||
		!o.IPTablesForwardRules || !o.SetNodeNetworkUnavailable ||
		o.KubeAnnotationPrefix != "flannel.alpha.coreos.com" || o.HealthzIP != "0.0.0.0" ||
		o.ResyncPeriod != 10*time.Second {
		t.Errorf("unexpected defaults: %+v", o)
	}
}

func TestParseOptionsFlagsBeatEnv(t *testing.T) {
	o, err := ParseOptions(
		[]string{"--iface=eth1", "-iface", "10.0.0.9", "--ip-masq", "--public-ip", "192.0.2.1", "-v=2", "--subnet-lease-renew-margin=30"},
		env(map[string]string{
			"FLANNELD_IFACE":           "ignored",
			"FLANNELD_ETCD_ENDPOINTS":  "http://a:2379, http://b:2379",
			"FLANNELD_IPTABLES_RESYNC": "7",
			"FLANNELD_IFACE_REGEX":     "^ens",
			"FLANNELD_PUBLIC_IPV6":     "2001:db8::1",
		}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Iface) != 2 || o.Iface[0] != "eth1" || o.Iface[1] != "10.0.0.9" {
		t.Errorf("Iface = %v", o.Iface)
	}
	if len(o.IfaceRegex) != 1 || o.IfaceRegex[0] != "^ens" {
		t.Errorf("IfaceRegex = %v", o.IfaceRegex)
	}
	if len(o.EtcdEndpoints) != 2 || o.EtcdEndpoints[1] != "http://b:2379" {
		t.Errorf("EtcdEndpoints = %v", o.EtcdEndpoints)
	}
	if !o.IPMasq || o.Verbosity != 2 || o.IPTablesResync != 7*time.Second || o.SubnetLeaseRenewMargin != 30*time.Minute {
		t.Errorf("options = %+v", o)
	}
	if o.PublicIP != netip.MustParseAddr("192.0.2.1") || o.PublicIPv6 != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("public IPs = %v %v", o.PublicIP, o.PublicIPv6)
	}
}

func TestParseOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{args: []string{"--public-ip=2001:db8::1"}},
		{args: []string{"--public-ip=nope"}},
		{args: []string{"--healthz-port=70000"}},
		{args: []string{"--no-such-flag"}},
		{args: []string{"stray"}},
		{env: map[string]string{"FLANNELD_IP_MASQ": "maybe"}},
		{env: map[string]string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "-3"}},
	} {
		if _, err := ParseOptions(tc.args, env(tc.env), io.Discard); err == nil {
			t.Errorf("ParseOptions(%v, %v): want error", tc.args, tc.env)
		}
	}
	if _, err := ParseOptions([]string{"-h"}, env(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: err = %v, want flag.ErrHelp", err)
	}
}

// Upstream refuses a renew margin outside 1..1439 minutes: with a 24 h
// lease, 0 would renew only at expiry and 1440 or more never in time.
func TestParseOptionsRenewMarginRange(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		env     map[string]string
		wantErr string // "" = accepted
	}{
		{args: []string{"--subnet-lease-renew-margin=1"}},
		{args: []string{"--subnet-lease-renew-margin=1439"}},
		{args: []string{"--subnet-lease-renew-margin=0"}, wantErr: "flags: --subnet-lease-renew-margin: 0 minutes is outside 1..1439"},
		{args: []string{"--subnet-lease-renew-margin=1440"}, wantErr: "flags: --subnet-lease-renew-margin: 1440 minutes is outside 1..1439"},
		{env: map[string]string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "0"},
			wantErr: "flags: --subnet-lease-renew-margin (from FLANNELD_SUBNET_LEASE_RENEW_MARGIN): 0 minutes is outside 1..1439"},
		{env: map[string]string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "2000"},
			wantErr: "flags: --subnet-lease-renew-margin (from FLANNELD_SUBNET_LEASE_RENEW_MARGIN): 2000 minutes is outside 1..1439"},
		{env: map[string]string{"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "1439"}},
	} {
		_, err := ParseOptions(tc.args, env(tc.env), io.Discard)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseOptions(%v, %v): %v", tc.args, tc.env, err)
		case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
			t.Errorf("ParseOptions(%v, %v): err = %v, want %q", tc.args, tc.env, err, tc.wantErr)
		}
	}
}

// Upstream hands a FLANNELD_* value to the flag's Set as it is, so a
// repeatable flag gets exactly one element from its variable: a regex may
// contain commas, and "eth0,eth1" is one (unmatchable) interface name
// there too. On the command line each occurrence is one element.
func TestParseOptionsRepeatableFromEnvIsOneValue(t *testing.T) {
	for _, tc := range []struct {
		args          []string
		env           map[string]string
		iface, regexp []string
	}{
		{env: map[string]string{"FLANNELD_IFACE_REGEX": "eth{0,3}"}, regexp: []string{"eth{0,3}"}},
		{env: map[string]string{"FLANNELD_IFACE_REGEX": "^(eth|ens)[0-9]{1,2}$"}, regexp: []string{"^(eth|ens)[0-9]{1,2}$"}},
		{env: map[string]string{"FLANNELD_IFACE": "eth0,eth1"}, iface: []string{"eth0,eth1"}},
		{env: map[string]string{"FLANNELD_IFACE": " eth0 "}, iface: []string{" eth0 "}},
		{args: []string{"--iface-regex=eth{0,3}", "--iface-regex", "ens,x", "--iface=a,b"},
			env:   map[string]string{"FLANNELD_IFACE_REGEX": "ignored", "FLANNELD_IFACE": "ignored"},
			iface: []string{"a,b"}, regexp: []string{"eth{0,3}", "ens,x"}},
	} {
		o, err := ParseOptions(tc.args, env(tc.env), io.Discard)
		if err != nil {
			t.Fatalf("ParseOptions(%v, %v): %v", tc.args, tc.env, err)
		}
		if diff := cmp.Diff(tc.iface, o.Iface, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ParseOptions(%v, %v): Iface (-want +got):\n%s", tc.args, tc.env, diff)
		}
		if diff := cmp.Diff(tc.regexp, o.IfaceRegex, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ParseOptions(%v, %v): IfaceRegex (-want +got):\n%s", tc.args, tc.env, diff)
		}
	}
}

func TestStatusSocket(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{want: "/run/flannel/weft.sock"},
		{args: []string{"--subnet-file=/var/run/h1/subnet.env"}, want: "/var/run/h1/weft.sock"},
		{env: map[string]string{"FLANNELD_SUBNET_FILE": "/x/y.env"}, want: "/x/weft.sock"},
		{args: []string{"--status-socket=/tmp/s.sock"}, want: "/tmp/s.sock"},
		{env: map[string]string{"FLANNELD_STATUS_SOCKET": "/tmp/e.sock"}, want: "/tmp/e.sock"},
		{args: []string{"--status-socket=none"}, want: ""},
	} {
		o, err := ParseOptions(tc.args, env(tc.env), io.Discard)
		if err != nil {
			t.Fatalf("ParseOptions(%v, %v): %v", tc.args, tc.env, err)
		}
		if o.StatusSocket != tc.want {
			t.Errorf("ParseOptions(%v, %v): StatusSocket = %q, want %q", tc.args, tc.env, o.StatusSocket, tc.want)
		}
		if o.HealthzStatus {
			t.Errorf("HealthzStatus on by default")
		}
	}
	o, err := ParseOptions(nil, env(map[string]string{"FLANNELD_HEALTHZ_STATUS": "true"}), io.Discard)
	if err != nil || !o.HealthzStatus {
		t.Errorf("FLANNELD_HEALTHZ_STATUS=true: %v, HealthzStatus %v", err, o.HealthzStatus)
	}
}

// TestEtcdFlagsOnAnotherFlagSet: the weft CLI registers the etcd flags
// beside its own; the environment sets only the etcd ones.
func TestEtcdFlagsOnAnotherFlagSet(t *testing.T) {
	fs := flag.NewFlagSet("weft leases", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "")
	e := AddEtcdFlags(fs)
	if err := fs.Parse([]string{"--etcd-cafile=/ca.pem", "--etcd-endpoints=https://a:2379,https://b:2379"}); err != nil {
		t.Fatal(err)
	}
	o, err := e.Resolve(env(map[string]string{
		"FLANNELD_ETCD_CAFILE":    "/ignored.pem",
		"FLANNELD_ETCD_CERTFILE":  "/cert.pem",
		"FLANNELD_ETCD_KEYFILE":   "/key.pem",
		"FLANNELD_ETCD_USERNAME":  "flannel",
		"FLANNELD_ETCD_PASSWORD":  "s3cret",
		"FLANNELD_ETCD_PREFIX":    "/p",
		"FLANNELD_JSON":           "true",
		"FLANNELD_SUBNET_FILE":    "/not/a/flag/here",
		"FLANNELD_ETCD_ENDPOINTS": "http://ignored:2379",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := Options{EtcdEndpoints: []string{"https://a:2379", "https://b:2379"}, EtcdPrefix: "/p",
		EtcdCAFile: "/ca.pem", EtcdCertFile: "/cert.pem", EtcdKeyFile: "/key.pem", EtcdUsername: "flannel", EtcdPassword: "s3cret"}
	if diff := cmp.Diff(want, o, cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("etcd options (-want +got):\n%s", diff)
	}
	if *asJSON {
		t.Error("FLANNELD_JSON set a flag that is not flanneld's")
	}
	if !e.Given("etcd-endpoints") || !e.Given("etcd-username") {
		t.Error("Given misses flags set on the command line or from the environment")
	}

	fs = flag.NewFlagSet("weft status", flag.ContinueOnError)
	e = AddEtcdFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	o, err = e.Resolve(env(nil))
	if err != nil || len(o.EtcdEndpoints) != 2 || o.EtcdPrefix != DefaultEtcdPrefix || e.Given("etcd-endpoints") {
		t.Errorf("defaults: %+v, %v, given %v", o, err, e.Given("etcd-endpoints"))
	}
}

func TestVXLANTxChecksum(t *testing.T) {
	o, err := ParseOptions(nil, env(nil), io.Discard)
	if err != nil || o.VXLANTxChecksum != TxChecksumAuto {
		t.Errorf("default: %q, %v", o.VXLANTxChecksum, err)
	}
	o, err = ParseOptions(nil, env(map[string]string{"FLANNELD_VXLAN_TX_CHECKSUM": "off"}), io.Discard)
	if err != nil || o.VXLANTxChecksum != TxChecksumOff {
		t.Errorf("FLANNELD_VXLAN_TX_CHECKSUM=off: %q, %v", o.VXLANTxChecksum, err)
	}
	if _, err := ParseOptions([]string{"--vxlan-tx-checksum=maybe"}, env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "not one of auto, on, off") {
		t.Errorf("--vxlan-tx-checksum=maybe: %v", err)
	}
}
