package cli

import (
	"context"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

// TestDoctorStoreOverMTLS: the doctor's store reads the leases and etcd's
// clock from a real etcd behind mutual TLS, with flanneld's flags: the
// clock agrees with ours (one machine) within the Date header's second.
func TestDoctorStoreOverMTLS(t *testing.T) {
	m := etcdtest.StartMTLS(t)
	putLeases(t, m.Client(t))
	s := etcdDoctorStore{opts: config.Options{EtcdEndpoints: []string{m.ClientURL}, EtcdPrefix: "/coreos.com/network",
		EtcdCAFile: m.CA.CAFile, EtcdCertFile: m.ClientCert, EtcdKeyFile: m.ClientKey}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := s.Leases(ctx)
	if err != nil || len(evs) != 2 {
		t.Fatalf("Leases: %d, %v", len(evs), err)
	}
	clock, rtt, err := s.Clock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if skew := time.Since(clock); skew < -time.Second || skew > time.Second+rtt {
		t.Errorf("etcd's clock is %s off ours on one machine (rtt %s)", skew, rtt)
	}
	bad := s
	bad.opts.EtcdCertFile, bad.opts.EtcdKeyFile = "", ""
	if _, _, err := bad.Clock(ctx); err == nil {
		t.Error("Clock without a client certificate: no error")
	}
}
