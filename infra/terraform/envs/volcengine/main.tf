# A GPU workshop cluster on Volcano Engine (VKE) with the labkit platform on top, on the Cloud
# Control provider (volcengine/volcenginecc). Credentials: VOLCENGINE_ACCESS_KEY and
# VOLCENGINE_SECRET_KEY in the environment. First apply in two steps (the providers below are
# configured from the new cluster):
#   terraform apply -target=module.cluster && terraform apply

provider "volcenginecc" {
  region = var.region
}

locals {
  kubeconfig   = yamldecode(module.cluster.kubeconfig)
  kube_cluster = local.kubeconfig.clusters[0].cluster
  kube_user    = local.kubeconfig.users[0].user
  # The CPU pool at the door: one node per attendees_per_cpu_node attendees plus two for the hub,
  # the KubeRay operator and the Ray head, so nobody waits for a node to boot at the first click.
  cpu_nodes_at_the_door = ceil(var.attendees / var.attendees_per_cpu_node) + 2
  system_nodes = merge(var.system_nodes, {
    desired = var.doors_open ? max(var.system_nodes.desired, local.cpu_nodes_at_the_door) : var.system_nodes.desired
  })
}

provider "kubernetes" {
  host                   = local.kube_cluster.server
  cluster_ca_certificate = base64decode(local.kube_cluster["certificate-authority-data"])
  client_certificate     = try(base64decode(local.kube_user["client-certificate-data"]), null)
  client_key             = try(base64decode(local.kube_user["client-key-data"]), null)
  token                  = try(local.kube_user.token, null)
}

provider "helm" {
  kubernetes {
    host                   = local.kube_cluster.server
    cluster_ca_certificate = base64decode(local.kube_cluster["certificate-authority-data"])
    client_certificate     = try(base64decode(local.kube_user["client-certificate-data"]), null)
    client_key             = try(base64decode(local.kube_user["client-key-data"]), null)
    token                  = try(local.kube_user.token, null)
  }
}

module "cluster" {
  source = "../../modules/volcengine-cluster"

  name                     = var.name
  project_name             = var.project_name
  kubernetes_version       = var.kubernetes_version
  zone_ids                 = var.zone_ids
  api_server_public_access = var.api_server_public_access
  system_instance_type     = var.system_instance_type
  system_nodes             = local.system_nodes
  gpu_instance_types       = var.gpu_instance_types
  gpu_nodes                = var.gpu_nodes
  enable_gpu_sharing       = var.enable_gpu_sharing
  ssh_key_pair_name        = var.ssh_key_pair_name
  registry_name            = var.registry_name
  nas_permission_group_id  = var.nas_permission_group_id
  model_cache_gb           = var.model_cache_gb
  tags                     = var.tags
}

module "platform" {
  source = "../../modules/workshop-platform"

  attendees                 = var.attendees
  doors_open                = var.doors_open
  auth_mode                 = var.auth_mode
  shared_password           = var.shared_password
  admin_password            = var.admin_password
  admin_users               = var.admin_users
  hub_source_ranges         = var.hub_source_ranges
  workshop_image            = var.workshop_image
  workshop_gpu_image        = var.workshop_gpu_image
  labs_repo                 = var.labs_repo
  labs_branch               = var.labs_branch
  enable_shared_gpu_profile = var.enable_gpu_sharing
  max_gpu_servers           = var.gpu_nodes.max
  gpu_node_selector         = module.cluster.gpu_node_selector
  gpu_taint_key             = module.cluster.gpu_taint.key
  hf_endpoint               = var.hf_endpoint
  kuberay_crds_base_url     = var.kuberay_crds_base_url
  model_cache = {
    nfs_server    = coalesce(var.model_cache_nfs_server, module.cluster.model_cache_nfs_server)
    nfs_path      = "/"
    storage_class = ""
    size          = "${var.model_cache_gb}Gi"
  }
}
