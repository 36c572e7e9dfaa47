package kube

import (
	"context"
	"fmt"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
)

// Permission is one thing a run does through the API.
type Permission struct {
	Verb        string // get, list, create, ...
	Group       string // "" (core), "apps"
	Resource    string // secrets, pods, deployments
	Subresource string // exec
	Namespace   string
	Name        string // "" = any
}

// String reads as RBAC does: "create pods/exec in namespace flightctl".
func (p Permission) String() string {
	res := p.Resource
	if p.Group != "" {
		res += "." + p.Group
	}
	if p.Subresource != "" {
		res += "/" + p.Subresource
	}
	s := p.Verb + " " + res
	if p.Name != "" {
		s += " " + p.Name
	}
	if p.Namespace != "" {
		s += " in namespace " + p.Namespace
	}
	return s
}

// MissingPermissionsError names every permission the run needs and does not have.
type MissingPermissionsError struct {
	Missing []Permission
	// Subject is who the API server says we are, when it tells.
	Subject string
	// What the operator should do, in the words of the interface used.
	Hint string
}

func (e *MissingPermissionsError) Error() string {
	names := make([]string, len(e.Missing))
	for i, p := range e.Missing {
		names[i] = p.String()
	}
	who := "the Kubernetes account in use"
	if e.Subject != "" {
		who = e.Subject
	}
	msg := fmt.Sprintf("%s lacks %d permission(s): %s", who, len(e.Missing), strings.Join(names, "; "))
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

// CheckAccess asks the API server, with one SelfSubjectAccessReview each, whether the
// client may do every permission, and returns those it may not. An error is returned only
// when the server cannot be asked.
func (c *Client) CheckAccess(ctx context.Context, perms []Permission) ([]Permission, error) {
	var missing []Permission
	for _, p := range perms {
		r := &authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authzv1.ResourceAttributes{
				Namespace: p.Namespace, Verb: p.Verb, Group: p.Group,
				Resource: p.Resource, Subresource: p.Subresource, Name: p.Name,
			},
		}}
		out := &authzv1.SelfSubjectAccessReview{}
		err := c.create(ctx, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", r, out)
		if err != nil {
			return nil, fmt.Errorf("check Kubernetes permissions on %s (%s): %w", c.REST.Host, c.Source, err)
		}
		if !out.Status.Allowed {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// WhoAmI returns the user name the API server sees, or "" when it does not say.
func (c *Client) WhoAmI(ctx context.Context) string {
	r := &authnv1.SelfSubjectReview{}
	if err := c.create(ctx, "/apis/authentication.k8s.io/v1/selfsubjectreviews", &authnv1.SelfSubjectReview{}, r); err != nil {
		return ""
	}
	return r.Status.UserInfo.Username
}
