package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

const prefix = "/coreos.com/network"

func putLeases(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k, v := range map[string]string{
		"10.5.1.0-24": `{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}`,
		"10.5.2.0-24": `{"PublicIP":"192.0.2.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}`,
	} {
		if _, err := cli.Put(ctx, prefix+"/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
}

func leaseRows(t *testing.T, out string) []leaseRow {
	t.Helper()
	var rows []leaseRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("weft leases --json: %v\n%s", err, out)
	}
	return rows
}

// TestLeasesMTLS: weft leases reaches an etcd that requires client
// certificates with flanneld's flags or its FLANNELD_* environment, and a
// client without a valid certificate is refused with the reason.
func TestLeasesMTLS(t *testing.T) {
	m := etcdtest.StartMTLS(t)
	putLeases(t, m.Client(t))
	tlsFlags := []string{"--etcd-endpoints=" + m.ClientURL, "--etcd-cafile=" + m.CA.CAFile,
		"--etcd-certfile=" + m.ClientCert, "--etcd-keyfile=" + m.ClientKey}

	out, stderr, code := run(t, append([]string{"leases", "--json"}, tlsFlags...)...)
	if rows := leaseRows(t, out); code != 0 || len(rows) != 2 || rows[0].Identity != "0e:00:00:00:00:01" {
		t.Errorf("weft leases with a client certificate: exit %d, %+v\n%s", code, rows, stderr)
	}

	// The same through flanneld's environment, and weft status's store
	// summary too.
	t.Setenv("FLANNELD_ETCD_ENDPOINTS", m.ClientURL)
	t.Setenv("FLANNELD_ETCD_CAFILE", m.CA.CAFile)
	t.Setenv("FLANNELD_ETCD_CERTFILE", m.ClientCert)
	t.Setenv("FLANNELD_ETCD_KEYFILE", m.ClientKey)
	out, stderr, code = run(t, "leases")
	if code != 0 || !strings.Contains(out, "10.5.2.0/24") {
		t.Errorf("weft leases from FLANNELD_ETCD_*: exit %d\n%s%s", code, out, stderr)
	}
	out, _, _ = run(t, "status", "--socket", t.TempDir()+"/none.sock", "--json")
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Store == nil || rep.Store.Leases != 2 {
		t.Errorf("weft status store summary over mTLS: %v\n%s", err, out)
	}
	for _, k := range []string{"FLANNELD_ETCD_CAFILE", "FLANNELD_ETCD_CERTFILE", "FLANNELD_ETCD_KEYFILE"} {
		t.Setenv(k, "")
	}

	// Under TLS 1.3 the client finishes its handshake before the server
	// checks the client's certificate, so a rejection arrives as an alert
	// or, if the server has already closed the socket, as a reset or a
	// broken pipe (see etcdstore's TestEtcdTLS).
	rejected := []string{"certificate required", "bad certificate", "unknown certificate authority", "broken pipe", "connection reset by peer"}
	for _, tc := range []struct {
		name  string
		flags []string
		want  []string
	}{
		{"NoClientCert", []string{"--etcd-cafile=" + m.CA.CAFile}, rejected},
		{"UntrustedClientCert", []string{"--etcd-cafile=" + m.CA.CAFile, "--etcd-certfile=" + m.StrangerCert, "--etcd-keyfile=" + m.StrangerKey}, rejected},
		{"WrongCA", []string{"--etcd-cafile=" + m.Other.CAFile, "--etcd-certfile=" + m.ClientCert, "--etcd-keyfile=" + m.ClientKey},
			[]string{"certificate signed by unknown authority"}},
		{"NoTLS", []string{"--etcd-endpoints=" + strings.Replace(m.ClientURL, "https:", "http:", 1)}, []string{"cannot reach etcd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, stderr, code := run(t, append([]string{"leases", "--timeout=2s"}, tc.flags...)...)
			if took := time.Since(start); took > 6*time.Second {
				t.Errorf("took %v past its 2 s timeout", took)
			}
			t.Logf("stderr: %s", stderr)
			if code == 0 || !containsAny(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q names none of %q", code, stderr, tc.want)
			}
		})
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

// TestLeasesPassword: weft leases authenticates as flanneld does.
func TestLeasesPassword(t *testing.T) {
	endpoint := etcdtest.Start(t)
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	putLeases(t, admin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "flannel"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "flannel", prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "flannel", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "flannel", "flannel"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	ep := "--etcd-endpoints=" + endpoint
	if out, stderr, code := run(t, "leases", ep, "--etcd-username=flannel", "--etcd-password=s3cret"); code != 0 || !strings.Contains(out, "10.5.1.0/24") {
		t.Errorf("with the password: exit %d\n%s%s", code, out, stderr)
	}
	if _, stderr, code := run(t, "leases", ep, "--etcd-username=flannel", "--etcd-password=wrong", "--timeout=5s"); code == 0 || !strings.Contains(stderr, "authentication failed") {
		t.Errorf("with a wrong password: exit %d, %s", code, stderr)
	}
	if _, stderr, code := run(t, "leases", ep, "--timeout=5s"); code == 0 || !strings.Contains(stderr, "user name is empty") {
		t.Errorf("without a user: exit %d, %s", code, stderr)
	}
}
