//! Standalone Kubernetes API emulator: serves on an address and writes a kubeconfig.
//! Faults and the request log are driven over HTTP under `/emulator/` (see README).

use clap::Parser;
use integration_tests::emulator::{Emulator, EmulatorOptions};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kube-emulator",
    about = "Kubernetes API emulator for tests (plain HTTP; RBAC for ServiceAccount tokens)"
)]
struct Args {
    /// Address to serve the API on.
    #[arg(long, env = "KUBE_EMULATOR_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at the emulator.
    #[arg(long, env = "KUBE_EMULATOR_KUBECONFIG", default_value = "kubeconfig.emulator")]
    kubeconfig: PathBuf,
    /// Namespace of the kubeconfig's context.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Watch events kept for resumption.
    #[arg(long, default_value_t = 50_000)]
    history: usize,
    /// Also run pods as local processes (images mapped to workspace binaries) and the
    /// Job/Deployment controllers.
    #[arg(long)]
    kubelet: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let opts = EmulatorOptions {
        listen: args.listen,
        namespace: args.namespace,
        history: args.history,
        kubeconfig_path: Some(args.kubeconfig.clone()),
        ..Default::default()
    };
    let emu = match Emulator::start(opts).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kube-emulator: {e}");
            std::process::exit(1);
        }
    };
    let _kubelet = args.kubelet.then(|| {
        integration_tests::kubelet::Kubelet::start(&emu, integration_tests::kubelet::KubeletOptions::default())
    });
    println!("kube-emulator serving {} (kubeconfig {})", emu.url(), args.kubeconfig.display());
    let _ = tokio::signal::ctrl_c().await;
}
