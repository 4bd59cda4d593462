package etcdstore_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

// TestList lists what weft leases shows: leases with a TTL, reservations,
// and keys whose value or name does not decode, each with its error.
func TestList(t *testing.T) {
	endpoint := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const prefix = "/p"
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, prefix+"/subnets/10.5.1.0-24", `{"PublicIP":"192.0.2.1","BackendType":"vxlan"}`, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"10.5.2.0-24": `{"PublicIP":"192.0.2.2","BackendType":"host-gw"}`,
		"10.5.3.0-24": `not json`,
		"nonsense":    `{}`,
	} {
		if _, err := cli.Put(ctx, prefix+"/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	s, err := etcdstore.New(ctx, testLogger(), etcdstore.ConfigFrom(config.Options{EtcdEndpoints: []string{endpoint}, EtcdPrefix: prefix}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 {
		t.Fatalf("List = %d entries, want 4: %+v", len(evs), evs)
	}
	byKey := map[string]int{}
	for i, ev := range evs {
		byKey[ev.Key] = i
	}
	get := func(k string) int {
		i, ok := byKey[prefix+"/subnets/"+k]
		if !ok {
			t.Fatalf("no entry for %s", k)
		}
		return i
	}
	if ev := evs[get("10.5.1.0-24")]; ev.Err != nil || ev.Lease.Reservation || ev.Lease.Attrs.BackendType != "vxlan" {
		t.Errorf("lease with a TTL: %+v", ev)
	}
	if ev := evs[get("10.5.2.0-24")]; ev.Err != nil || !ev.Lease.Reservation || ev.Lease.Attrs.PublicIP.String() != "192.0.2.2" {
		t.Errorf("reservation: %+v", ev)
	}
	if ev := evs[get("10.5.3.0-24")]; ev.Err == nil || ev.Lease.Subnet.String() != "10.5.3.0/24" {
		t.Errorf("malformed value: %+v", ev)
	}
	if ev := evs[get("nonsense")]; ev.Err == nil {
		t.Errorf("malformed key: %+v", ev)
	}
}
