package kube

import (
	"context"
	"encoding/json"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The calls of a restore journal kept in the cluster: a Lease for exclusive use, and
// writes of its Secret that succeed only over the version last seen. Errors are client-go's
// (apierrors.IsNotFound, IsAlreadyExists, IsConflict work on them).

// inClusterSource is the Source of a client built from the pod's service account.
const inClusterSource = "in-cluster service account"

// InCluster reports whether the client uses the service account of the pod it runs in
// (a Job or CronJob in the cluster), rather than a kubeconfig or a host.
func (c *Client) InCluster() bool { return c.Source == inClusterSource }

const leasesPath = "/apis/coordination.k8s.io/v1/namespaces"

// GetLease reads the Lease ns/name (coordination.k8s.io/v1).
func (c *Client) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	raw, err := c.rc.Get().AbsPath(leasesPath, ns, "leases", name).Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	return decodeLease(raw)
}

// CreateLease creates l in its namespace; apierrors.IsAlreadyExists when one is there.
func (c *Client) CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	body, err := encodeLease(l)
	if err != nil {
		return nil, err
	}
	raw, err := c.rc.Post().AbsPath(leasesPath, l.Namespace, "leases").SetHeader("Content-Type", "application/json").Body(body).Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	return decodeLease(raw)
}

// UpdateLease replaces the Lease l.Namespace/l.Name; l.ResourceVersion must be the live
// one (apierrors.IsConflict otherwise).
func (c *Client) UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	body, err := encodeLease(l)
	if err != nil {
		return nil, err
	}
	raw, err := c.rc.Put().AbsPath(leasesPath, l.Namespace, "leases", l.Name).SetHeader("Content-Type", "application/json").Body(body).Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	return decodeLease(raw)
}

// DeleteLeaseIf deletes the Lease ns/name if its resource version is still rv.
func (c *Client) DeleteLeaseIf(ctx context.Context, ns, name, rv string) error {
	body, err := preconditions(rv)
	if err != nil {
		return err
	}
	return c.rc.Delete().AbsPath(leasesPath, ns, "leases", name).SetHeader("Content-Type", "application/json").Body(body).Do(ctx).Error()
}

// DeleteSecretIf deletes the Secret ns/name if its resource version is still rv.
func (c *Client) DeleteSecretIf(ctx context.Context, ns, name, rv string) error {
	body, err := preconditions(rv)
	if err != nil {
		return err
	}
	return c.rc.Delete().AbsPath("/api/v1/namespaces", ns, "secrets", name).SetHeader("Content-Type", "application/json").Body(body).Do(ctx).Error()
}

func preconditions(rv string) ([]byte, error) {
	return json.Marshal(&metav1.DeleteOptions{TypeMeta: metav1.TypeMeta{Kind: "DeleteOptions", APIVersion: "v1"},
		Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
}

func encodeLease(l *coordinationv1.Lease) ([]byte, error) {
	w := l.DeepCopy()
	w.APIVersion, w.Kind = "coordination.k8s.io/v1", "Lease"
	return json.Marshal(w)
}

func decodeLease(raw []byte) (*coordinationv1.Lease, error) {
	l := &coordinationv1.Lease{}
	if err := json.Unmarshal(raw, l); err != nil {
		return nil, fmt.Errorf("read Lease: %w", err)
	}
	return l, nil
}
