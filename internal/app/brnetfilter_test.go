package app

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/weft-net/weft/internal/config"
)

func TestCheckBridgeNetfilter(t *testing.T) {
	const v4, v6 = "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"
	on := fstest.MapFS{v4: {Data: []byte("1\n")}, v6: {Data: []byte("1\n")}}
	yes, no := true, false
	for _, tc := range []struct {
		name    string
		net     config.Network
		proc    fstest.MapFS
		wantErr string // substring; "" = no error
		wantLog string // substring of the log; "" = empty log
	}{
		{name: "loaded", net: config.Network{EnableIPv4: true, EnableIPv6: true}, proc: on},
		{name: "missing v4", net: config.Network{EnableIPv4: true}, proc: fstest.MapFS{},
			wantErr: "br_netfilter is not loaded (/proc/sys/net/bridge/bridge-nf-call-iptables is missing): run 'modprobe br_netfilter', " +
				"list it in /etc/modules-load.d/ to keep it across reboots, and set sysctl net.bridge.bridge-nf-call-iptables=1"},
		{name: "missing, dual stack", net: config.Network{EnableIPv4: true, EnableIPv6: true}, proc: fstest.MapFS{},
			wantErr: "set sysctl net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1"},
		{name: "missing v6 only", net: config.Network{EnableIPv4: true, EnableIPv6: true}, proc: fstest.MapFS{v4: on[v4]},
			wantErr: "/proc/sys/net/bridge/bridge-nf-call-ip6tables is missing"},
		{name: "v6 not enabled", net: config.Network{EnableIPv4: true}, proc: fstest.MapFS{v4: on[v4]}},
		{name: "v4 not enabled", net: config.Network{EnableIPv6: true}, proc: fstest.MapFS{v6: on[v6]}},
		{name: "explicit iptables", net: config.Network{EnableIPv4: true, EnableNFTables: &no}, proc: fstest.MapFS{},
			wantErr: "br_netfilter is not loaded"},
		{name: "nftables skips", net: config.Network{EnableIPv4: true, EnableIPv6: true, EnableNFTables: &yes}, proc: fstest.MapFS{}},
		{name: "off warns", net: config.Network{EnableIPv4: true}, proc: fstest.MapFS{v4: {Data: []byte("0\n")}},
			wantLog: `level=WARN msg="bridged pod traffic bypasses iptables; set the sysctl to 1" sysctl=net.bridge.bridge-nf-call-iptables value=0`},
		{name: "unreadable is ignored", net: config.Network{EnableIPv4: true}, // v4 a directory: reading it fails, but not with "does not exist".
			proc:    fstest.MapFS{v4 + "/x": {}},
			wantLog: "level=DEBUG"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			err := checkBridgeNetfilter(log, tc.proc, &tc.net)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("err = %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if (tc.wantLog == "") != (buf.Len() == 0) || !strings.Contains(buf.String(), tc.wantLog) {
				t.Errorf("log = %q, want %q", buf.String(), tc.wantLog)
			}
		})
	}
}
