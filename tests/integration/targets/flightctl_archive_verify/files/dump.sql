--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: t; Type: TABLE; Schema: public; Owner: admin
--

CREATE TABLE public.t (
    a integer
);

--
-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: admin
--

COPY public.t (a) FROM stdin;
1
\.

--
-- PostgreSQL database dump complete
--

