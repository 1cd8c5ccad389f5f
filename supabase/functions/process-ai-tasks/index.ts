// The process-ai-tasks Edge Function. All of it lives in runner/ so that the
// worker and the function share one code path; this file only serves it.
//
// Deploy with the CLI's API bundler, which can follow imports outside
// supabase/ (the Docker bundler cannot):
//   supabase functions deploy process-ai-tasks --use-api
import { handler } from "../../../runner/main.ts";

Deno.serve(handler);
