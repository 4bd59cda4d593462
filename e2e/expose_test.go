package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

// TestEtcdMTLS runs flanneld and the weft CLI against an etcd that
// requires client certificates, through the lab's hub: a host with its
// certificate joins; a host without one is refused and its log says why;
// weft leases and weft status reach etcd with flanneld's flags or its
// FLANNELD_* environment, and are refused with the reason without a
// certificate.
func TestEtcdMTLS(t *testing.T) {
	c := newCluster(t, "wtexm", 2, "198.18.75.0/24", "") // the network config goes to the TLS etcd
	hub := net.IPv4(198, 18, 75, 1)
	m := etcdtest.StartMTLS(t, hub) // the server certificate names the hub address too
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := m.Client(t).Put(ctx, "/coreos.com/network/config", `{"Network":"10.75.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(m.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := c.Expose(2479, u.Host)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "https://" + addr
	tlsFlags := []string{"--etcd-endpoints=" + endpoint, "--etcd-cafile=" + m.CA.CAFile,
		"--etcd-certfile=" + m.ClientCert, "--etcd-keyfile=" + m.ClientKey}
	tlsEnv := []string{"FLANNELD_ETCD_ENDPOINTS=" + endpoint, "FLANNELD_ETCD_CAFILE=" + m.CA.CAFile,
		"FLANNELD_ETCD_CERTFILE=" + m.ClientCert, "FLANNELD_ETCD_KEYFILE=" + m.ClientKey}
	h1, h2 := c.Hosts[0], c.Hosts[1]

	if err := c.Start(h1, tlsFlags...); err != nil {
		t.Fatal(err)
	}
	c.subnets[0] = c.waitSubnet(h1)

	// Under TLS 1.3 a refused client certificate shows as an alert, or
	// as a reset or broken pipe if the server closed first.
	rejected := []string{"certificate required", "bad certificate", "broken pipe", "connection reset by peer"}
	if err := c.Start(h2, "--etcd-endpoints="+endpoint, "--etcd-cafile="+m.CA.CAFile); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "h2's log to say why etcd refuses it", 45*time.Second, func() bool {
		b, _ := os.ReadFile(h2.LogFile)
		return strings.Contains(string(b), "network config not available") && containsAny(string(b), rejected)
	})
	t.Logf("the daemon without a certificate said why after %v", took.Round(time.Second))
	if _, err := os.Stat(h2.SubnetFile); !os.IsNotExist(err) {
		t.Errorf("h2 without a certificate wrote %s: %v", h2.SubnetFile, err)
	}

	// weft leases with flanneld's environment lists h1's lease alone.
	out, err := c.Exec(ctx, h1, "env", append(tlsEnv, weftBin, "leases", "--json")...)
	var rows []struct{ Subnet, PublicIP string }
	if err != nil || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 || rows[0].Subnet != c.subnets[0].String() {
		t.Errorf("weft leases over mTLS: %v\n%s", err, out)
	}
	// weft status with no flags but that environment: the daemon over
	// the socket, the store over mTLS.
	out, err = c.Exec(ctx, h1, "env", append(tlsEnv, weftBin, "status", "--json")...)
	var st struct {
		Daemon struct{ Lease struct{ Subnet string } }
		Store  struct{ Leases int }
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Daemon.Lease.Subnet != c.subnets[0].String() || st.Store.Leases != 1 {
		t.Errorf("weft status over the socket and mTLS: %v\n%s", err, out)
	}
	// Without the certificate the CLI is refused, and says why.
	out, err = c.Exec(ctx, h1, weftBin, "leases", "--etcd-endpoints="+endpoint, "--etcd-cafile="+m.CA.CAFile, "--timeout=3s")
	if err == nil || !containsAny(out, rejected) {
		t.Errorf("weft leases without a client certificate: %v\n%s", err, out)
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
