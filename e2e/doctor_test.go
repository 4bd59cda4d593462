package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/tools/lab"
)

type doctorFinding struct {
	Check, Level, Message, Fix string
	Fixed                      bool
}

// doctor runs `weft doctor --json` (with args) on h against its flanneld
// and etcd, and returns the findings by check and whether it exited 0.
func (c *cluster) doctor(h *lab.Host, args ...string) (map[string][]doctorFinding, bool) {
	c.t.Helper()
	sock := filepath.Join(filepath.Dir(h.SubnetFile), "weft.sock")
	full := append([]string{"doctor", "--json", "--socket", sock, "--etcd-endpoints", c.EtcdEndpoint}, args...)
	out, err := c.Exec(context.Background(), h, weftBin, full...)
	var rep struct {
		Findings []doctorFinding
		OK       bool
	}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		c.t.Fatalf("%s: weft doctor: %v / %v\n%s", h.NS, err, jerr, out)
	}
	if (err == nil) != rep.OK {
		c.t.Errorf("%s: weft doctor exit %v with ok=%v", h.NS, err, rep.OK)
	}
	by := map[string][]doctorFinding{}
	for _, f := range rep.Findings {
		by[f.Check] = append(by[f.Check], f)
	}
	return by, rep.OK
}

func worst(fs []doctorFinding) string {
	rank := map[string]int{"ok": 0, "skip": 1, "warn": 2, "fail": 3}
	w := ""
	for _, f := range fs {
		if w == "" || rank[f.Level] > rank[w] {
			w = f.Level
		}
	}
	return w
}

// TestDoctorOnLabHost runs `weft doctor` on a host running our flanneld
// (two hosts, vxlan, etcd): healthy, it finds no failure; then each fault
// a flannel user keeps hitting is made on the host by hand and the doctor
// names it, and fixes the fixable one: forwarding off; a second flanneld
// in the namespace; a subnet.env that disagrees with the lease; a route
// inside the cluster network that is not ours; a FORWARD policy of DROP
// without our rules; a second lease claiming this host's PublicIP.
func TestDoctorOnLabHost(t *testing.T) {
	const n = 107
	c := newCluster(t, "wtdc", 2, fmt.Sprintf("198.18.%d.0/24", n), fmt.Sprintf(`{"Network":"10.%d.0.0/16","Backend":{"Type":"vxlan"}}`, n))
	c.startAll("--resync-period=5m") // a rewritten subnet.env stays until we put it back
	h := c.Hosts[0]
	waitFor(t, "host 2's route on host 1", 10*time.Second, func() bool {
		return strings.Contains(c.sh(h, "ip", "route"), c.subnets[1].String())
	})
	by, ok := c.doctor(h)
	for check, fs := range by {
		if worst(fs) == "fail" {
			t.Errorf("healthy host: %s: %+v", check, fs)
		}
	}
	if !ok {
		t.Errorf("healthy host: doctor not ok")
	}
	for _, want := range []string{"daemon", "ip_forward", "flanneld-processes", "subnet.env", "duplicate-leases", "routes"} {
		if w := worst(by[want]); w != "ok" {
			t.Errorf("healthy host: check %s is %q: %+v", want, w, by[want])
		}
	}

	t.Run("ip_forward off, fixed", func(t *testing.T) {
		c.sh(h, "sysctl", "-qw", "net.ipv4.ip_forward=0")
		by, ok := c.doctor(h)
		if ok || worst(by["ip_forward"]) != "fail" {
			t.Fatalf("ip_forward 0: ok=%v %+v", ok, by["ip_forward"])
		}
		by, _ = c.doctor(h, "--fix")
		if fs := by["ip_forward"]; len(fs) == 0 || !fs[0].Fixed {
			t.Errorf("--fix: %+v", fs)
		}
		if v := strings.TrimSpace(c.sh(h, "sysctl", "-n", "net.ipv4.ip_forward")); v != "1" {
			t.Errorf("ip_forward after --fix = %s", v)
		}
	})

	t.Run("a second flanneld", func(t *testing.T) {
		dir := t.TempDir()
		fake := filepath.Join(dir, "flanneld")
		sleep, err := exec.LookPath("sleep")
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(sleep)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fake, b, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", h.NS, fake, "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		by, ok := c.doctor(h)
		if ok || worst(by["flanneld-processes"]) != "fail" || !strings.Contains(by["flanneld-processes"][0].Message, "2 flanneld processes") {
			t.Errorf("second flanneld: ok=%v %+v", ok, by["flanneld-processes"])
		}
	})

	t.Run("subnet.env of another lease", func(t *testing.T) {
		orig := c.sh(h, "cat", h.SubnetFile)
		other := strings.Replace(orig, "FLANNEL_SUBNET="+c.subnets[0].Addr().Next().String(), "FLANNEL_SUBNET="+c.subnets[1].Addr().Next().String(), 1)
		if err := os.WriteFile(h.SubnetFile, []byte(other), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(h.SubnetFile, []byte(orig), 0o644) })
		by, ok := c.doctor(h)
		if ok || worst(by["subnet.env"]) != "fail" {
			t.Errorf("subnet.env of host 2's subnet: ok=%v %+v", ok, by["subnet.env"])
		}
	})

	t.Run("a foreign route in the cluster network", func(t *testing.T) {
		dst := fmt.Sprintf("10.%d.250.0/24", n)
		c.sh(h, "ip", "route", "add", dst, "dev", "eth0")
		t.Cleanup(func() { c.Exec(context.Background(), h, "ip", "route", "del", dst) })
		by, _ := c.doctor(h)
		if w := worst(by["routes"]); w != "warn" && w != "fail" || !strings.Contains(fmt.Sprint(by["routes"]), dst) {
			t.Errorf("foreign route %s: %+v", dst, by["routes"])
		}
	})

	t.Run("FORWARD policy DROP", func(t *testing.T) {
		c.sh(h, "iptables", "-P", "FORWARD", "DROP")
		t.Cleanup(func() { c.Exec(context.Background(), h, "iptables", "-P", "FORWARD", "ACCEPT") })
		// Our forward rules accept the cluster network: fine.
		by, _ := c.doctor(h)
		if w := worst(by["forward-policy"]); w != "ok" {
			t.Errorf("FORWARD DROP with our rules: %+v", by["forward-policy"])
		}
		// Without them (deleted by hand; the resync that puts them back is
		// 5 minutes away), pod traffic is dropped: a failure.
		for _, rule := range strings.Split(c.sh(h, "iptables", "-S", "FORWARD"), "\n") {
			if strings.Contains(rule, "FLANNEL-FWD") && strings.HasPrefix(rule, "-A FORWARD ") {
				c.sh(h, "sh", "-c", "iptables -D "+strings.TrimPrefix(rule, "-A "))
			}
		}
		by, ok := c.doctor(h)
		if ok || worst(by["forward-policy"]) != "fail" {
			t.Errorf("FORWARD DROP without our rules: ok=%v %+v", ok, by["forward-policy"])
		}
	})

	t.Run("two leases with one PublicIP", func(t *testing.T) {
		key := fmt.Sprintf("/coreos.com/network/subnets/10.%d.251.0-24", n)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.etcd.Put(ctx, key, vxlanPeerValue(c.Hosts[1].IP.String())); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.etcd.Delete(context.Background(), key) })
		by, _ := c.doctor(h)
		if w := worst(by["duplicate-leases"]); (w != "warn" && w != "fail") || !strings.Contains(fmt.Sprint(by["duplicate-leases"]), c.Hosts[1].IP.String()) {
			t.Errorf("duplicate PublicIP: %+v", by["duplicate-leases"])
		}
	})

	t.Run("two leases with one VTEP MAC", func(t *testing.T) {
		// Host 2's lease's VTEP MAC, copied into a lease of another
		// (made-up) host: two VTEPs answering for one MAC.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l := c.leaseOf(c.Hosts[1])
		var data struct{ VtepMAC string }
		if err := json.Unmarshal(l.Attrs.BackendData, &data); err != nil || data.VtepMAC == "" {
			t.Fatalf("host 2's backend data %s: %v", l.Attrs.BackendData, err)
		}
		key := fmt.Sprintf("/coreos.com/network/subnets/10.%d.252.0-24", n)
		val := fmt.Sprintf(`{"PublicIP":"198.18.%d.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, n, data.VtepMAC)
		if _, err := c.etcd.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.etcd.Delete(context.Background(), key) })
		by, _ := c.doctor(h)
		if w := worst(by["duplicate-leases"]); (w != "warn" && w != "fail") || !strings.Contains(fmt.Sprint(by["duplicate-leases"]), data.VtepMAC) {
			t.Errorf("duplicate VTEP MAC %s: %+v", data.VtepMAC, by["duplicate-leases"])
		}
	})
}
